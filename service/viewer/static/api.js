// The JSON API as the viewer's pages call it, with the tab's API key.

export const KEY = "attnserve.apiKey";

export function authHeaders() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorText(response) {
  try {
    const body = await response.json();
    const error = body.error;
    const message = typeof error === "string" ? error : error?.message;
    return `${response.status}: ${message ?? response.statusText}`;
  } catch {
    return `${response.status}: ${response.statusText}`;
  }
}

export async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers ?? {}) } });
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

export function setStatus(text, isError = false) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// A DOM element with attributes (never inline styles: the page's CSP forbids them) and children.
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

export function formatValue(value, digits = 3) {
  if (value === null || value === undefined) return "no data";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(digits);
  return String(value);
}
