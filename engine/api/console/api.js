// Calls to the admin API with the caller's session. The session cookie is HttpOnly (this
// code never sees it); every change sends X-CSRF-Token from the login answer, kept in
// sessionStorage (gone with the tab). Filters travel in POST bodies, never in the URL.
const CSRF = "engine.csrf";

export class ApiError extends Error {
  constructor(status, text) {
    super(text);
    this.status = status;
  }
}

function diagnostics(body) {
  if (body && Array.isArray(body.issue) && body.issue.length) {
    return body.issue.map((i) => i.diagnostics || i.code).join("; ");
  }
  return (body && body.error) || "request failed";
}

export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    headers["X-CSRF-Token"] = sessionStorage.getItem(CSRF) || "";
  }
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, diagnostics(data));
  return data;
}

export async function login(user, password, totp) {
  const answer = await call("POST", "/auth/login", { user, password, totp });
  sessionStorage.setItem(CSRF, answer.csrf_token);
  return answer;
}

export async function logout() {
  try {
    await call("POST", "/auth/logout");
  } finally {
    sessionStorage.removeItem(CSRF);
  }
}
