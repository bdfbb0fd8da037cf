/** The one way the Worker answers an error: status + `{ error: { code, message } }`. */
import type { Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { type ErrorCode, errorBody } from "../protocol/index.ts";

/** Answers `status` with the protocol's JSON error body. */
export function jsonError(c: Context, status: ContentfulStatusCode, code: ErrorCode, message: string): Response {
  return c.json(errorBody(code, message), status);
}
