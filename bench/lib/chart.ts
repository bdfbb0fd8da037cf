/** A small SVG bar chart (no dependencies): ours beside the baseline, per workload. */

/** One group of bars. */
export interface BarGroup {
  label: string;
  ours: number;
  baseline: number;
}

function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;");
}

/** One panel: a title, a unit, groups of two bars (heights on a log scale when `log`). */
function panel(title: string, unit: string, groups: BarGroup[], x0: number, width: number, height: number, log = false): string {
  const max = Math.max(1, ...groups.flatMap((g) => [g.ours, g.baseline]));
  // Log scale from 1: latencies span 5 ms to 10 s; a linear axis would hide the small ones.
  const scale = (v: number) => (log ? Math.log10(Math.max(1, v)) / Math.log10(Math.max(10, max)) : v / max);
  const plotTop = 40;
  const plotHeight = height - 100;
  const slot = width / Math.max(1, groups.length);
  const bar = Math.min(40, slot / 3);
  const parts = [`<text x="${x0 + width / 2}" y="20" text-anchor="middle" font-weight="600">${escapeXml(title)}</text>`];
  groups.forEach((g, i) => {
    const cx = x0 + slot * i + slot / 2;
    for (const [j, value, color] of [
      [0, g.ours, "#2563eb"],
      [1, g.baseline, "#9ca3af"],
    ] as const) {
      const h = scale(value) * plotHeight;
      const x = cx - bar + j * bar;
      parts.push(
        `<rect x="${x.toFixed(1)}" y="${(plotTop + plotHeight - h).toFixed(1)}" width="${(bar - 2).toFixed(1)}" height="${h.toFixed(1)}" fill="${color}"/>`,
      );
      parts.push(
        `<text x="${(x + bar / 2 - 1).toFixed(1)}" y="${(plotTop + plotHeight - h - 4).toFixed(1)}" text-anchor="middle" font-size="10">${escapeXml(value >= 100 ? Math.round(value).toLocaleString("en-US") : value.toFixed(1))}</text>`,
      );
    }
    parts.push(`<text x="${cx.toFixed(1)}" y="${plotTop + plotHeight + 16}" text-anchor="middle" font-size="11">${escapeXml(g.label)}</text>`);
  });
  parts.push(`<text x="${x0 + 4}" y="${plotTop - 6}" font-size="10" fill="#555">${escapeXml(unit)}</text>`);
  return parts.join("\n");
}

/** Two panels side by side (throughput, latency) with a legend. */
export function chart(throughput: BarGroup[], latency: BarGroup[], subtitle: string): string {
  const width = 960;
  const height = 360;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height + 30}" font-family="system-ui, sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#fff"/>
${panel("Events delivered per second (higher is better)", "events/s", throughput, 0, width / 2, height)}
${panel("p99 commit-to-receive latency (lower is better, log scale)", "ms", latency, width / 2, width / 2, height, true)}
<rect x="20" y="${height + 6}" width="12" height="12" fill="#2563eb"/><text x="38" y="${height + 16}">pg-edge-realtime</text>
<rect x="170" y="${height + 6}" width="12" height="12" fill="#9ca3af"/><text x="188" y="${height + 16}">baseline: LISTEN + ws server (the LISTEN design)</text>
<text x="${width - 10}" y="${height + 16}" text-anchor="end" fill="#555">${escapeXml(subtitle)}</text>
</svg>
`;
}
