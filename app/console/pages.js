// The console's pages. Each returns a DOM node built from API answers.
import { api, hasPath, modelNames } from './api.js';
import { cdfChart } from './chart.js';
import { drawMap, errorLegend, planRings } from './map.js';
import { confirmDialog, errorBox, fmt, h, onLeave, pct, progressBar, table, when } from './ui.js';

const METRICS = [['mean_m', 'mean m', fmt], ['median_m', 'median m', fmt], ['p75_m', 'P75 m', fmt], ['p95_m', 'P95 m', fmt], ['floor_hit', 'floor hit', pct]];
const TERMINAL = new Set(['succeeded', 'failed']);

function every(ms, fn) {
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    try { if ((await fn()) === false) return; } catch { /* shown by the page; keep polling */ }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  let timer = setTimeout(tick, ms);
  onLeave(() => { stopped = true; clearTimeout(timer); });
}

// -- sites ----------------------------------------------------------------------------------------

export async function sitesPage() {
  const [sites, ready] = await Promise.all([api('/sites'), api('/readyz').catch((e) => ({ status: `not ready: ${e.message}`, checks: {} }))]);
  const health = h('p', { id: 'health', class: ready.status === 'ready' ? 'ok' : 'bad' },
    `Service: ${ready.status}`, ready.mode ? ` (${ready.mode} mode)` : '',
    Object.entries(ready.checks || {}).map(([k, v]) => ` · ${k}: ${v}`).join(''));
  const rows = await Promise.all(sites.map(async (s) => {
    const versions = await api(`/sites/${encodeURIComponent(s.id)}/models`).catch(() => []);
    const last = versions.map((v) => v.created_at).sort().pop();
    const active = s.active_model ? `${s.active_model.name} v${s.active_model.version}` : 'none';
    const state = s.active_model ? 'serving' : (s.counts && s.counts.fingerprints ? 'survey, no model' : 'empty');
    return h('tr', { 'data-site': s.id },
      h('td', {}, h('a', { href: `#/sites/${encodeURIComponent(s.id)}` }, s.name)), h('td', { class: 'mono' }, s.id),
      h('td', { class: 'num' }, s.counts ? s.counts.fingerprints : '–'), h('td', { class: 'num' }, s.counts ? s.counts.windows : '–'),
      h('td', { class: 'num' }, s.counts ? s.counts.queries : '–'),
      h('td', {}, active), h('td', {}, `${versions.length}`), h('td', {}, last ? when(last) : '–'),
      h('td', { class: state === 'serving' ? 'ok' : 'muted' }, state));
  }));
  return h('section', { id: 'sites-page' }, h('h2', {}, 'Sites'), health,
    sites.length ? table(['name', 'id', 'fingerprints', 'windows', 'queries', 'active model', 'versions', 'last model update', 'state'], rows, { id: 'sites' })
      : h('p', {}, 'No sites this key may see. Create one with POST /sites (see API docs).'));
}

// -- one site: the map ----------------------------------------------------------------------------

export async function sitePage(siteId) {
  const sid = encodeURIComponent(siteId);
  const [site, all, queries] = await Promise.all([
    api(`/sites/${sid}`), api(`/sites/${sid}/survey/points`, { params: { limit: 1 } }), api(`/sites/${sid}/queries`, { params: { limit: 1000 } })]);
  const floors = [...new Set([...(site.floors || []), ...all.floors, ...queries.queries.map((q) => q.floor)])];
  const floorSelect = h('select', { id: 'floor' }, floors.map((f) => h('option', { value: f }, `floor ${f}`)));
  const density = h('input', { type: 'checkbox', id: 'density' });
  const showQueries = h('input', { type: 'checkbox', id: 'show-queries', checked: true });
  const canvas = h('canvas', { id: 'map', width: 900, height: 560 });
  const info = h('p', { id: 'map-info', class: 'muted' });
  const plansAvailable = await hasPath('/sites/{site_id}/floors/{floor}/plan');
  const sessionsAvailable = await hasPath('/sessions/{session_id}');
  const tracks = [];
  const errors = queries.queries.map((q) => q.error_m).sort((a, b) => a - b);
  const maxErrorM = Math.max(5, errors.length ? errors[Math.floor(0.95 * (errors.length - 1))] : 20);

  async function redraw() {
    const floor = floorSelect.value;
    const pts = await api(`/sites/${sid}/survey/points`, { params: { floor, limit: 5000 } });
    let rings = [];
    if (plansAvailable) {
      try { rings = planRings(await api(`/sites/${sid}/floors/${encodeURIComponent(floor)}/plan`)); } catch { rings = []; }
    }
    const qs = showQueries.checked ? queries.queries.filter((q) => q.floor === floor) : [];
    drawMap(canvas, { bbox: pts.bbox, points: pts.points, queries: qs, planRings: rings, density: density.checked,
      maxErrorM, tracks: tracks.filter((t) => t.floor === undefined || t.floor === floor) });
    info.textContent = `${pts.points.length} of ${pts.total} survey points on floor ${floor}` +
      `${rings.length ? ', floor plan' : ', outline = survey bounding box (no floor plan)'}; ` +
      `${qs.length} of the site's ${queries.total} queries (newest ${queries.queries.length}) on this floor.`;
    canvas.dataset.points = String(pts.points.length);
    canvas.dataset.queries = String(qs.length);
  }
  for (const el of [floorSelect, density, showQueries]) el.addEventListener('change', redraw);

  const c = site.counts || {};
  const header = h('div', { class: 'card' },
    h('h2', {}, site.name, ' ', h('span', { class: 'mono muted' }, site.id)),
    h('p', {}, `${c.fingerprints ?? '–'} fingerprints · ${c.windows ?? '–'} sensor windows · ${c.queries ?? '–'} queries · active model: `,
      site.active_model ? `${site.active_model.name} v${site.active_model.version}` : 'none', ` · created ${when(site.created_at)}`),
    h('p', {}, h('a', { href: `#/sites/${sid}/models`, id: 'versions-link' }, 'Model versions'), ' · ',
      h('a', { href: `#/jobs?site=${sid}` }, 'Jobs'), ' · ', finetuneForm(siteId)));
  const controls = h('div', { class: 'controls' }, h('label', {}, 'Floor ', floorSelect),
    h('label', {}, showQueries, ' recent queries (colour = error_m)'), h('label', {}, density, ' query density'));
  const parts = [header, controls, canvas, errorLegend(maxErrorM), info];
  if (sessionsAvailable) parts.push(sessionPanel(tracks, redraw));
  const page = h('section', { id: 'site-page' }, ...parts);
  if (floors.length) setTimeout(redraw, 0); else info.textContent = 'This site has no survey points and no queries yet.';
  return page;
}

function finetuneForm(siteId) {
  const select = h('select', { id: 'finetune-model' });
  modelNames().then((names) => select.replaceChildren(...names.map((n) => h('option', { value: n }, n))));
  const out = h('span', { id: 'finetune-result' });
  return h('form', { class: 'inline', id: 'finetune', onsubmit: async (e) => {
    e.preventDefault();
    try {
      const ref = await api(`/sites/${encodeURIComponent(siteId)}/finetune`, { method: 'POST', body: { model: select.value } });
      location.hash = `#/jobs/${encodeURIComponent(ref.job_id)}`;
    } catch (err) { out.replaceChildren(errorBox(err)); }
  } }, 'Train ', select, ' ', h('button', { type: 'submit', id: 'finetune-submit' }, 'Start finetune'), out);
}

// Tracking sessions (GET /sessions/{id}): shown only when the server has that endpoint.
function sessionPanel(tracks, redraw) {
  const input = h('input', { id: 'session-id', placeholder: 'session id', size: 30 });
  const out = h('div', { id: 'session-out' });
  return h('form', { class: 'card', onsubmit: async (e) => {
    e.preventDefault();
    try {
      const s = await api(`/sessions/${encodeURIComponent(input.value.trim())}`);
      tracks.length = 0;
      const floor = s.points.length ? s.points[s.points.length - 1].floor : undefined;
      tracks.push({ points: s.points, color: '#e67e22', floor }, { points: s.smoothed || [], color: '#8e44ad', floor });
      out.replaceChildren(h('p', {}, `${s.points.length} answers; orange = causal track, purple = smoothed`));
      await redraw();
    } catch (err) { out.replaceChildren(errorBox(err)); }
  } }, h('h3', {}, 'Tracking session'), input, ' ', h('button', { type: 'submit' }, 'Show track'), out);
}

// -- model versions -------------------------------------------------------------------------------

export async function modelsPage(siteId) {
  const sid = encodeURIComponent(siteId);
  const [site, versions] = await Promise.all([api(`/sites/${sid}`), api(`/sites/${sid}/models`)]);
  const active = versions.find((v) => v.status === 'active');
  const chartBox = h('div', { id: 'cdf-box' });
  const detailBox = h('div', { id: 'version-detail' });
  const picked = new Set();
  // Compare the active version with the newest other one by default.
  const newestOther = versions.filter((v) => v !== active).sort((a, b) => b.version - a.version)[0];
  if (active) picked.add(active.version);
  if (newestOther) picked.add(newestOther.version);

  async function drawCdf() {
    const details = await Promise.all([...picked].sort((a, b) => a - b).map((v) => api(`/sites/${sid}/models/${v}`)));
    const series = details.filter((d) => d.cdf.length).map((d) => ({ label: `v${d.version} ${d.model} (${d.status})`, points: d.cdf }));
    chartBox.replaceChildren(h('h3', {}, 'Holdout error CDF'),
      series.length ? cdfChart(series) : h('p', { class: 'muted' }, 'The chosen versions have no holdout metrics.'),
      h('p', { class: 'muted small' }, 'Each version\'s errors on its survey holdout: every 5% of the distribution where the version stored it, else 0 m, median, P75 and P95 (older and co-trained versions). Tick up to two versions to compare.'));
  }

  async function showDetail(v) {
    const d = await api(`/sites/${sid}/models/${v}`);
    const training = d.training || {};
    const cotrain = Object.fromEntries(Object.entries(training).filter(([k]) => /round|pseudo|accept|reject|guard|queries|session|traffic|vanished|decision|holdout_(before|after)/i.test(k)));
    detailBox.replaceChildren(h('div', { class: 'card' },
      h('h3', {}, `Version ${d.version}: ${d.model}, ${d.status}`),
      d.status_reason ? h('p', {}, `Status reason: ${d.status_reason}`) : null,
      h('p', {}, `source ${d.source}`, d.parent_version ? ` · parent v${d.parent_version}` : '', d.job_id ? ' · job ' : '',
        d.job_id ? h('a', { href: `#/jobs/${encodeURIComponent(d.job_id)}` }, d.job_id) : ''),
      d.source === 'cotrain' && Object.keys(cotrain).length ? [h('h4', {}, 'Update summary'), h('pre', { id: 'cotrain-summary' }, JSON.stringify(cotrain, null, 2))] : null,
      h('h4', {}, 'Training record'), h('pre', { id: 'training-record' }, JSON.stringify(training, null, 2))));
  }

  async function activate(v) {
    const target = versions.find((x) => x.version === v);
    const rows = METRICS.map(([k, label, f]) => {
      const a = active ? active.metrics[k] : null, c = target.metrics[k];
      const delta = typeof a === 'number' && typeof c === 'number' ? c - a : null;
      return [label, active ? f(a) : '–', f(c), delta === null ? '–' : `${delta > 0 ? '+' : ''}${k === 'floor_hit' ? pct(delta) : fmt(delta)}`];
    });
    const body = h('div', { id: 'activate-diff' },
      h('p', {}, active ? `Replace active v${active.version} (${active.model}) with v${v} (${target.model})? Every API process picks it up within seconds.`
        : `Make v${v} (${target.model}) the active version?`),
      table(['holdout metric', active ? `active v${active.version}` : 'active', `v${v}`, 'difference'], rows));
    if (!(await confirmDialog(`Activate version ${v}`, body, `Activate v${v}`))) return;
    try {
      await api(`/sites/${sid}/models/${v}/activate`, { method: 'POST' });
      window.dispatchEvent(new HashChangeEvent('hashchange'));
    } catch (err) { detailBox.replaceChildren(errorBox(err)); }
  }

  const rows = versions.map((v) => {
    const box = h('input', { type: 'checkbox', checked: picked.has(v.version), 'aria-label': `compare v${v.version}`, onchange: (e) => {
      if (e.target.checked) picked.add(v.version); else picked.delete(v.version);
      while (picked.size > 2) picked.delete([...picked][0]);
      drawCdf();
    } });
    return h('tr', { 'data-version': v.version, class: v.status },
      h('td', {}, box), h('td', {}, h('a', { href: 'javascript:void 0', onclick: () => showDetail(v.version) }, `v${v.version}`)),
      h('td', {}, v.model), h('td', { class: `status ${v.status}` }, v.status), h('td', {}, v.source),
      h('td', {}, v.parent_version ? `v${v.parent_version}` : '–'), h('td', {}, when(v.created_at)),
      ...METRICS.map(([k, , f]) => h('td', { class: 'num' }, f(v.metrics[k]))),
      h('td', {}, v.status === 'active' ? '' : h('button', { type: 'button', class: 'activate', 'data-version': v.version, onclick: () => activate(v.version) },
        v.status === 'retired' && active && v.version < active.version ? 'Roll back' : 'Activate')));
  });
  const page = h('section', { id: 'models-page' },
    h('h2', {}, 'Model versions of ', h('a', { href: `#/sites/${sid}` }, site.name)),
    versions.length ? table(['cmp', 'version', 'model', 'status', 'source', 'parent', 'created', ...METRICS.map((m) => m[1]), ''], rows, { id: 'versions' })
      : h('p', {}, 'No versions yet: start a finetune from the site page.'),
    chartBox, detailBox);
  if (versions.length) { await drawCdf(); await showDetail((active || newestOther).version); }
  return page;
}

// -- jobs -----------------------------------------------------------------------------------------

function jobRow(j) {
  return h('tr', { 'data-job': j.id, class: j.state },
    h('td', {}, h('a', { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.id)), h('td', {}, j.kind),
    h('td', {}, j.site_id ? h('a', { href: `#/sites/${encodeURIComponent(j.site_id)}` }, j.site_id) : '–'),
    h('td', { class: `state ${j.state}` }, j.state), h('td', {}, progressBar(j.progress, j.state)),
    h('td', {}, when(j.created_at)), h('td', {}, j.error ? h('span', { class: 'bad' }, j.error) : j.message));
}

export async function jobsPage(siteId) {
  const load = () => api('/jobs', { params: { site_id: siteId, limit: 100 } });
  const body = h('div', {});
  const render = (jobs) => body.replaceChildren(jobs.jobs.length
    ? table(['job', 'kind', 'site', 'state', 'progress', 'created', 'message / error'], jobs.jobs.map(jobRow), { id: 'jobs' })
    : h('p', {}, 'No jobs yet.'));
  let jobs = await load();
  render(jobs);
  every(2000, async () => { if (jobs.jobs.some((j) => !TERMINAL.has(j.state))) { jobs = await load(); render(jobs); } });
  return h('section', { id: 'jobs-page' }, h('h2', {}, siteId ? `Jobs of site ${siteId}` : 'Jobs'), body);
}

export async function jobPage(jobId) {
  const jid = encodeURIComponent(jobId);
  const box = h('div', {});
  const log = [];
  const render = (j) => {
    if (!log.length || log[log.length - 1].message !== j.message) log.push({ at: new Date(), message: j.message, progress: j.progress });
    box.replaceChildren(h('div', { class: 'card' },
      h('h2', {}, `Job ${j.id}`),
      h('p', {}, `${j.kind} · site `, j.site_id ? h('a', { href: `#/sites/${encodeURIComponent(j.site_id)}` }, j.site_id) : '–',
        ` · created ${when(j.created_at)}`, j.started_at ? ` · started ${when(j.started_at)}` : '', j.finished_at ? ` · finished ${when(j.finished_at)}` : ''),
      h('p', {}, 'State: ', h('strong', { id: 'job-state', class: `state ${j.state}` }, j.state)),
      progressBar(j.progress, j.state),
      h('p', { id: 'job-message' }, j.message),
      j.error ? h('div', { class: 'error', id: 'job-error' }, `Failed: ${j.error}`) : null,
      j.model_version != null && j.site_id ? h('p', {}, 'Model version: ', h('a', { id: 'job-version', href: `#/sites/${encodeURIComponent(j.site_id)}/models` }, `v${j.model_version}`)) : null,
      j.metrics ? table(METRICS.map((m) => m[1]), [METRICS.map(([k, , f]) => f(j.metrics[k]))]) : null,
      h('h4', {}, 'Messages seen'), h('ol', { id: 'job-log' }, log.map((e) => h('li', {}, `${when(e.at.toISOString())} ${pct(e.progress)} ${e.message}`))),
      j.result ? [h('h4', {}, 'Result'), h('pre', {}, JSON.stringify(j.result, null, 2))] : null));
  };
  let job = await api(`/jobs/${jid}`);
  render(job);
  every(1000, async () => {
    if (TERMINAL.has(job.state)) return false;
    job = await api(`/jobs/${jid}`);
    render(job);
    return !TERMINAL.has(job.state);
  });
  return h('section', { id: 'job-page' }, box);
}

// -- keys (admin) ---------------------------------------------------------------------------------

export async function keysPage() {
  const list = await api('/keys');
  const created = h('div', { id: 'created-key' });
  const role = h('select', { id: 'new-key-role' }, ['operator', 'app', 'admin'].map((r) => h('option', { value: r }, r)));
  const sites = h('input', { id: 'new-key-sites', placeholder: 'site ids, comma-separated (empty = all sites)', size: 40 });
  const name = h('input', { id: 'new-key-name', placeholder: 'name' });
  const form = h('form', { class: 'card', id: 'new-key', onsubmit: async (e) => {
    e.preventDefault();
    const scope = sites.value.split(',').map((s) => s.trim()).filter(Boolean);
    try {
      const k = await api('/keys', { method: 'POST', body: { role: role.value, name: name.value, sites: scope.length ? scope : undefined } });
      const page = await keysPage();
      page.querySelector('#created-key').replaceChildren(h('div', { class: 'notice' },
        h('p', {}, `Key ${k.id} (${k.role}) created. Copy it now: it is shown only once.`), h('code', { id: 'new-key-value' }, k.key)));
      document.getElementById('view').replaceChildren(page);
    } catch (err) { created.replaceChildren(errorBox(err)); }
  } }, h('h3', {}, 'New key'), role, ' ', sites, ' ', name, ' ', h('button', { type: 'submit' }, 'Create'));
  const rows = list.keys.map((k) => [
    h('span', { class: 'mono' }, k.id), k.name || '–', k.role, k.sites ? k.sites.join(', ') : 'all', h('span', { class: 'mono' }, `${k.prefix}…`),
    when(k.created_at),
    h('button', { type: 'button', class: 'secondary revoke', 'data-key': k.id, onclick: async () => {
      const ok = await confirmDialog('Revoke key', h('p', {}, `Revoke ${k.name || k.id} (${k.role})? Calls with it fail from now on.`), 'Revoke');
      if (!ok) return;
      try { await api(`/keys/${encodeURIComponent(k.id)}`, { method: 'DELETE' }); document.getElementById('view').replaceChildren(await keysPage()); } catch (err) { created.replaceChildren(errorBox(err)); }
    } }, 'Revoke')]);
  return h('section', { id: 'keys-page' }, h('h2', {}, 'API keys'), created, form,
    table(['id', 'name', 'role', 'sites', 'prefix', 'created', ''], rows, { id: 'keys' }),
    h('p', { class: 'muted small' }, 'The bootstrap key (SITELOC_BOOTSTRAP_ADMIN_KEY), when set, is not stored and not listed.'));
}
