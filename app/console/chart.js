// Error CDFs as SVG polylines, several versions overlaid.
const NS = 'http://www.w3.org/2000/svg';
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd'];

function el(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// series: [{label, points: [{error_m, fraction}]}]
export function cdfChart(series, { width = 560, height = 300 } = {}) {
  const svg = el('svg', { width, height, viewBox: `0 0 ${width} ${height}`, class: 'cdf', role: 'img' });
  const pad = { l: 44, r: 12, t: 12, b: 36 };
  const maxX = Math.max(1, ...series.flatMap((s) => s.points.map((p) => p.error_m))) * 1.05;
  const X = (x) => pad.l + (x / maxX) * (width - pad.l - pad.r);
  const Y = (y) => height - pad.b - y * (height - pad.t - pad.b);
  for (let f = 0; f <= 1.0001; f += 0.25) {
    svg.append(el('line', { x1: X(0), x2: X(maxX), y1: Y(f), y2: Y(f), stroke: '#eee' }));
    svg.append(el('text', { x: 4, y: Y(f) + 4, 'font-size': 11, fill: '#666' }, f.toFixed(2)));
  }
  const step = maxX > 50 ? 10 : maxX > 20 ? 5 : maxX > 8 ? 2 : 1;
  for (let x = 0; x <= maxX; x += step) {
    svg.append(el('text', { x: X(x) - 4, y: height - pad.b + 14, 'font-size': 11, fill: '#666' }, String(x)));
  }
  svg.append(el('text', { x: width / 2 - 60, y: height - 4, 'font-size': 12, fill: '#333' }, 'holdout error (m)'));
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = s.points.map((p) => `${X(p.error_m)},${Y(p.fraction)}`).join(' ');
    svg.append(el('polyline', { points: pts, fill: 'none', stroke: color, 'stroke-width': 2, 'data-version': s.label }));
    if (s.points.length < 8) for (const p of s.points) svg.append(el('circle', { cx: X(p.error_m), cy: Y(p.fraction), r: 3, fill: color }));
    svg.append(el('text', { x: pad.l + 10, y: pad.t + 14 + 16 * i, 'font-size': 12, fill: color }, s.label));
  });
  return svg;
}
