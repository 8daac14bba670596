// Every call of the console goes through the public API with the key the user signed in with.
const STORE = 'siteloc.key';
const BASE = new URL('../', import.meta.url); // the console lives at <server>/console/

export class ApiError extends Error {
  constructor(status, detail) {
    super(formatDetail(detail));
    this.status = status;
    this.detail = detail;
  }
}

export function formatDetail(detail) {
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => (d && d.msg ? `${(d.loc || []).filter((x) => x !== 'body').join('.')}: ${d.msg}` : JSON.stringify(d))).join('; ');
  }
  return JSON.stringify(detail);
}

export const getKey = () => sessionStorage.getItem(STORE);
export const setKey = (key) => sessionStorage.setItem(STORE, key);
export const clearKey = () => sessionStorage.removeItem(STORE);

export async function api(path, { method = 'GET', body, params } = {}) {
  const url = new URL(path.replace(/^\//, ''), BASE);
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, v);
  const headers = { Authorization: `Bearer ${getKey() || ''}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, `the server did not answer (${err.message})`);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!response.ok) {
    const detail = data && typeof data === 'object' && 'detail' in data ? data.detail : (data || response.statusText);
    throw new ApiError(response.status, detail);
  }
  return data;
}

// Which optional endpoints this server has (floor plans, tracking sessions), from its OpenAPI document.
let spec = null;
export async function hasPath(path) {
  if (spec === null) {
    try { spec = await api('/openapi.json'); } catch { spec = { paths: {} }; }
  }
  return Boolean(spec.paths && spec.paths[path]);
}

// The model names a finetune accepts (the FinetuneIn schema's enum).
export async function modelNames() {
  await hasPath('/');
  const prop = spec.components && spec.components.schemas && spec.components.schemas.FinetuneIn
    && spec.components.schemas.FinetuneIn.properties.model;
  return (prop && (prop.enum || (prop.anyOf || []).flatMap((x) => x.enum || []))) || ['wknn'];
}
