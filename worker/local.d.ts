/**
 * Types for this repository's own Worker and its workerd tests, never shipped in the package (a
 * library must not declare its users' globals): `env` and `exports` from "cloudflare:workers" are
 * this Worker's.
 */
declare global {
  namespace Cloudflare {
    interface Env extends LocalEnv {}
    interface GlobalProps {
      mainModule: typeof import("./index.ts");
    }
  }
}

type LocalEnv = import("./index.ts").Env;

export {};
