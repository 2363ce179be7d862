// Calls to the posts through the gateway's JSON bridge; a refusal becomes an Error with the
// post's message, the HTTP status and the gRPC code.
export async function rpc(method, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const reply = await fetch(`/api/rpc/${method}`, { method: "POST", headers, body: JSON.stringify(body || {}) });
  const data = await reply.json().catch(() => ({ message: reply.statusText }));
  if (!reply.ok) {
    const error = new Error(data.message || reply.statusText);
    error.status = reply.status;
    error.code = data.error;
    throw error;
  }
  return data;
}

// A write's idempotency key: fresh per operator action, the same across its retries.
export const newKey = () => crypto.randomUUID();
