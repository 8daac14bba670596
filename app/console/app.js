// The console: sign in with an API key, then hash-routed pages. Every figure comes from the public API.
import { ApiError, clearKey, getKey, setKey } from './api.js';
import { errorBox, h, runCleanups } from './ui.js';
import { jobPage, jobsPage, keysPage, modelsPage, sitePage, sitesPage } from './pages.js';

const view = document.getElementById('view');
const banner = document.getElementById('banner');

function showBanner(message) {
  banner.textContent = message;
  banner.hidden = !message;
}

function signInForm(message) {
  const input = h('input', { id: 'key', type: 'password', autocomplete: 'off', placeholder: 'sl_…', required: true, size: 48 });
  const form = h('form', { id: 'signin', class: 'card narrow', onsubmit: async (e) => {
    e.preventDefault();
    setKey(input.value.trim());
    await route();
  } },
  h('h2', {}, 'Sign in'),
  h('p', {}, 'Paste an operator or admin API key. It is kept in this tab only (session storage) and sent as ',
    h('code', {}, 'Authorization: Bearer'), ' with every API call.'),
  message ? errorBox(message) : null,
  h('label', { for: 'key' }, 'API key'), input,
  h('button', { type: 'submit', id: 'signin-submit' }, 'Sign in'));
  return form;
}

const ROUTES = [
  [/^#\/sites\/?$/, () => sitesPage()],
  [/^#\/sites\/([^/]+)\/models\/?$/, (m) => modelsPage(decodeURIComponent(m[1]))],
  [/^#\/sites\/([^/]+)\/?$/, (m) => sitePage(decodeURIComponent(m[1]))],
  [/^#\/jobs\/([^/]+)\/?$/, (m) => jobPage(decodeURIComponent(m[1]))],
  [/^#\/jobs\/?(\?site=([^/]+))?$/, (m) => jobsPage(m[2] ? decodeURIComponent(m[2]) : null)],
  [/^#\/keys\/?$/, () => keysPage()],
];

let navigation = 0; // a slower earlier page must not replace a newer one

async function route() {
  const mine = ++navigation;
  runCleanups();
  showBanner('');
  const signout = document.getElementById('signout');
  const who = document.getElementById('who');
  if (!getKey()) {
    signout.hidden = true;
    who.textContent = '';
    view.replaceChildren(signInForm());
    return;
  }
  signout.hidden = false;
  who.textContent = `key ${getKey().slice(0, 10)}…`;
  const hash = location.hash || '#/sites';
  const match = ROUTES.map(([re, page]) => [hash.match(re), page]).find(([m]) => m);
  view.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  try {
    const content = match ? await match[1](match[0]) : h('p', {}, `No page ${hash}.`);
    if (mine === navigation) view.replaceChildren(content);
  } catch (err) {
    if (mine !== navigation) return;
    if (err instanceof ApiError && err.status === 401) {
      clearKey();
      signout.hidden = true;
      who.textContent = '';
      view.replaceChildren(signInForm(err));
      return;
    }
    view.replaceChildren(h('div', { class: 'card' }, h('h2', {}, 'This page could not be shown'), errorBox(err)));
  }
}

document.getElementById('signout').addEventListener('click', () => { clearKey(); location.hash = '#/sites'; route(); });
window.addEventListener('hashchange', route);
window.addEventListener('unhandledrejection', (e) => showBanner(`Error: ${e.reason && e.reason.message ? e.reason.message : e.reason}`));
route();
