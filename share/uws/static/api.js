// The UWS API as pages call it. The browser session's cookie goes along by itself (page
// scripts never see the login token); every call that changes something carries the page's
// XSRF token, which the server checks on cookie-authenticated requests.
const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? '';

export const prefix = meta('uws-prefix') || '/';
export const xsrf = meta('uws-xsrf');

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function signIn() {
  window.location.assign(prefix + 'login');
}

// The server's answer as the API's envelope: its payload, or an ApiError with its message.
export function answerOf(status, payload) {
  if (status === 401) {
    signIn();
    throw new ApiError(401, payload?.message || 'Signed out.');
  }
  if (status < 200 || status >= 300 || payload?.success === false) {
    throw new ApiError(status, payload?.message || `The server answered ${status}.`);
  }
  return payload;
}

export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-XSRFToken'] = xsrf;
  const init = { method, headers, credentials: 'same-origin' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'The server could not be reached. Check the connection and try again.');
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  return answerOf(response.status, payload);
}
