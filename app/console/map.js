// The site map on a canvas, in the site's metric frame (x right, y up, metres, same scale on both axes).
import { h } from './ui.js';

export function errorColor(errorM, maxM) {
  const t = Math.max(0, Math.min(1, errorM / maxM));
  // green (0) -> amber -> red (maxM and above)
  const hue = 120 * (1 - t);
  return `hsl(${hue}, 80%, 42%)`;
}

function niceStep(span) {
  const raw = span / 8;
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) || raw;
}

function extent(layers) {
  const xs = [], ys = [];
  const add = (x, y) => { if (Number.isFinite(x) && Number.isFinite(y)) { xs.push(x); ys.push(y); } };
  if (layers.bbox) { add(layers.bbox.min_x, layers.bbox.min_y); add(layers.bbox.max_x, layers.bbox.max_y); }
  for (const q of layers.queries || []) add(q.x, q.y);
  for (const ring of layers.planRings || []) for (const [x, y] of ring) add(x, y);
  for (const track of layers.tracks || []) for (const p of track.points) add(p.x, p.y);
  if (!xs.length) return null;
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x1 - x0 < 1) { x0 -= 0.5; x1 += 0.5; }
  if (y1 - y0 < 1) { y0 -= 0.5; y1 += 0.5; }
  return { x0, x1, y0, y1 };
}

// layers: {bbox, points, queries, planRings, density, maxErrorM, tracks: [{points, color, label}]}
export function drawMap(canvas, layers) {
  const ctx = canvas.getContext('2d');
  const W = canvas.width, H = canvas.height, pad = 40;
  ctx.clearRect(0, 0, W, H);
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, W, H);
  const ext = extent(layers);
  if (!ext) {
    ctx.fillStyle = '#666';
    ctx.font = '14px sans-serif';
    ctx.fillText('No survey points or queries on this floor yet.', pad, H / 2);
    return;
  }
  const s = Math.min((W - 2 * pad) / (ext.x1 - ext.x0), (H - 2 * pad) / (ext.y1 - ext.y0));
  const X = (x) => pad + (x - ext.x0) * s;
  const Y = (y) => H - pad - (y - ext.y0) * s;

  // grid in metres
  const step = niceStep(Math.max(ext.x1 - ext.x0, ext.y1 - ext.y0));
  ctx.strokeStyle = '#eee'; ctx.fillStyle = '#888'; ctx.font = '11px sans-serif'; ctx.lineWidth = 1;
  for (let gx = Math.ceil(ext.x0 / step) * step; gx <= ext.x1; gx += step) {
    ctx.beginPath(); ctx.moveTo(X(gx), Y(ext.y0)); ctx.lineTo(X(gx), Y(ext.y1)); ctx.stroke();
    ctx.fillText(`${+gx.toFixed(6)}`, X(gx) - 8, H - pad + 16);
  }
  for (let gy = Math.ceil(ext.y0 / step) * step; gy <= ext.y1; gy += step) {
    ctx.beginPath(); ctx.moveTo(X(ext.x0), Y(gy)); ctx.lineTo(X(ext.x1), Y(gy)); ctx.stroke();
    ctx.fillText(`${+gy.toFixed(6)}`, 2, Y(gy) + 4);
  }
  ctx.fillText('metres (site frame)', W - pad - 100, H - 6);

  // floor plan (walkable polygons) or the survey's bounding box
  if (layers.planRings && layers.planRings.length) {
    ctx.fillStyle = 'rgba(120,140,160,0.12)'; ctx.strokeStyle = '#7a8ca0';
    for (const ring of layers.planRings) {
      ctx.beginPath();
      ring.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
      ctx.closePath(); ctx.fill(); ctx.stroke();
    }
  } else if (layers.bbox) {
    const b = layers.bbox;
    ctx.strokeStyle = '#7a8ca0'; ctx.setLineDash([6, 4]);
    ctx.strokeRect(X(b.min_x), Y(b.max_y), (b.max_x - b.min_x) * s, (b.max_y - b.min_y) * s);
    ctx.setLineDash([]);
  }

  // density of queries: counts on a grid of cells
  if (layers.density && layers.queries && layers.queries.length) {
    const cell = step / 2;
    const counts = new Map();
    for (const q of layers.queries) {
      const key = `${Math.floor(q.x / cell)},${Math.floor(q.y / cell)}`;
      counts.set(key, (counts.get(key) || 0) + 1);
    }
    const max = Math.max(...counts.values());
    for (const [key, n] of counts) {
      const [i, j] = key.split(',').map(Number);
      ctx.fillStyle = `rgba(40,90,220,${0.1 + 0.55 * (n / max)})`;
      ctx.fillRect(X(i * cell), Y((j + 1) * cell), cell * s, cell * s);
    }
  }

  // survey points
  ctx.fillStyle = '#555';
  for (const p of layers.points || []) ctx.fillRect(X(p.x) - 1.5, Y(p.y) - 1.5, 3, 3);

  // queries coloured by error_m
  const maxE = layers.maxErrorM || 20;
  for (const q of layers.queries || []) {
    ctx.beginPath(); ctx.arc(X(q.x), Y(q.y), 4, 0, 2 * Math.PI);
    ctx.fillStyle = errorColor(q.error_m, maxE); ctx.fill();
    ctx.strokeStyle = '#fff'; ctx.lineWidth = 1; ctx.stroke();
  }

  // tracks (tracking sessions): a polyline each
  for (const track of layers.tracks || []) {
    ctx.strokeStyle = track.color; ctx.lineWidth = 2; ctx.beginPath();
    track.points.forEach((p, i) => (i ? ctx.lineTo(X(p.x), Y(p.y)) : ctx.moveTo(X(p.x), Y(p.y))));
    ctx.stroke();
  }
}

export function errorLegend(maxM) {
  const stops = [0, 0.25, 0.5, 0.75, 1].map((t) => errorColor(t * maxM, maxM)).join(', ');
  return h('div', { class: 'legend' },
    h('span', { class: 'swatch survey' }), ' survey point  ',
    h('span', { class: 'ramp', style: `background: linear-gradient(to right, ${stops})` }),
    ` query error_m 0 – ${maxM.toFixed(0)}+ m  `,
    h('span', { class: 'swatch density' }), ' query density');
}

// GeoJSON (Polygon / MultiPolygon features) -> outer rings as [[x, y], ...]
export function planRings(geojson) {
  const rings = [];
  for (const f of (geojson && geojson.features) || []) {
    const g = f.geometry || {};
    if (g.type === 'Polygon') rings.push(g.coordinates[0]);
    if (g.type === 'MultiPolygon') for (const poly of g.coordinates) rings.push(poly[0]);
  }
  return rings;
}
