// A gateway's event stream (/api/events, /api/map/events) read with fetch (EventSource cannot send a bearer token):
// server-sent events parsed from the body, reopened after a drop with the last id seen
// (Last-Event-ID), so the gateway resumes or tells the page to resync.
const RETRY_MS = [250, 500, 1000, 2000, 4000];

export function openEvents(token, handlers, url = "/api/events") {
  let lastId = null;
  let closed = false;
  let controller = null;
  let failures = 0;

  function dispatch(kind, data, id) {
    if (id) lastId = id;
    const handler = handlers[kind];
    if (handler) handler(data, id);
    else if (handlers.other) handlers.other(kind, data, id);
  }

  async function once() {
    controller = new AbortController();
    const headers = { Authorization: `Bearer ${token()}` };
    if (lastId) headers["Last-Event-ID"] = lastId;
    const reply = await fetch(url, { headers, signal: controller.signal });
    if (!reply.ok || !reply.body) throw new Error(`event stream: ${reply.status}`);
    const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let id = null;
    let kind = "message";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      failures = 0;
      // Characters received per stream (the JSON is ASCII: bytes), for bench.web.
      const counted = (window.__console.bytes ||= {});
      counted[url] = (counted[url] || 0) + value.length;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
        if (line === "") {
          if (data.length) dispatch(kind, JSON.parse(data.join("\n")), id);
          id = null;
          kind = "message";
          data = [];
        } else if (line.startsWith("id:")) id = line.slice(3).trim();
        else if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
    }
  }

  (async () => {
    while (!closed) {
      try {
        await once();
      } catch (error) {
        if (closed) return;
        if (handlers.lost) handlers.lost(error);
      }
      const wait = RETRY_MS[Math.min(failures, RETRY_MS.length - 1)];
      failures += 1;
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  })();

  return {
    close() {
      closed = true;
      if (controller) controller.abort();
    },
    get lastId() {
      return lastId;
    },
  };
}
