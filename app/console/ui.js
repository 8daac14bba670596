// Tiny DOM helpers: text goes in as text nodes, never as HTML.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== undefined && c !== null && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

export const fmt = (v, digits = 2) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(digits) : '–');
export const pct = (v) => (typeof v === 'number' && Number.isFinite(v) ? `${(v * 100).toFixed(1)}%` : '–');
// The API's times are UTC; SQLite's come without an offset, so read those as UTC too.
const utc = (iso) => new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`);
export const when = (iso) => (iso ? utc(iso).toISOString().replace('T', ' ').slice(0, 19) + 'Z' : '–');

export function table(header, rows, attrs = {}) {
  return h('table', attrs, h('thead', {}, h('tr', {}, header.map((c) => h('th', {}, c)))),
    h('tbody', {}, rows.map((r) => (r instanceof Node ? r : h('tr', {}, r.map((c) => h('td', {}, c)))))));
}

export function errorBox(err) {
  const status = err && err.status ? `${err.status}: ` : '';
  return h('div', { class: 'error', role: 'alert' }, `${status}${err && err.message ? err.message : err}`);
}

export function progressBar(fraction, state) {
  const p = Math.round((fraction || 0) * 100);
  return h('div', { class: `progress ${state || ''}`, role: 'progressbar', 'aria-valuenow': p, 'aria-valuemin': 0, 'aria-valuemax': 100 },
    h('div', { class: 'bar', style: `width:${p}%` }), h('span', {}, `${p}%`));
}

// A confirmation dialog; resolves true when confirmed.
export function confirmDialog(title, body, okLabel) {
  return new Promise((resolve) => {
    const close = (v) => { overlay.remove(); resolve(v); };
    const overlay = h('div', { class: 'overlay' },
      h('div', { class: 'dialog', role: 'dialog', 'aria-modal': 'true' },
        h('h3', {}, title), body,
        h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'secondary', id: 'dialog-cancel', onclick: () => close(false) }, 'Cancel'),
          h('button', { type: 'button', id: 'dialog-ok', onclick: () => close(true) }, okLabel))));
    document.body.append(overlay);
  });
}

// Pages register timers here; they are stopped when the page changes.
let cleanups = [];
export function onLeave(fn) { cleanups.push(fn); }
export function runCleanups() { for (const fn of cleanups) fn(); cleanups = []; }
