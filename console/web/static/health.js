// The posts' health and the gateways' airtime (the downlink gate's duty-cycle accounting,
// per gateway and ETSI sub-band), read from the posts every few seconds.
import { h } from "preact";
import { useEffect, useState } from "preact/hooks";
import htm from "htm";
import { rpc } from "/static/api.js";

const html = htm.bind(h);
const EVERY_MS = 5000;

export function Health({ posts, token }) {
  const [airtime, setAirtime] = useState(null);
  const [error, setError] = useState("");
  useEffect(() => {
    let stop = false;
    async function read() {
      try {
        const reply = await rpc("PostAdmin/GetAirtime", {}, token());
        if (!stop) { setAirtime(reply); setError(""); }
      } catch (e) {
        if (!stop) setError(e.message);
      }
    }
    read();
    const timer = setInterval(read, EVERY_MS);
    return () => { stop = true; clearInterval(timer); };
  }, []);
  const gateways = airtime && airtime.gateways ? [...airtime.gateways]
    .sort((a, b) => b.used_s / b.budget_s - a.used_s / a.budget_s) : [];
  return html`
    <section class="health" aria-labelledby="health-title">
      <h2 id="health-title">Posts and airtime</h2>
      <table aria-label="The posts">
        <thead><tr><th>Post</th><th>Role</th><th>Epoch</th><th>Standby lag</th></tr></thead>
        <tbody>${(posts ? posts.posts : []).map((p) => html`
          <tr key=${p.address}><td>${p.post || p.address}</td><td>${p.role}</td><td>${p.epoch || "–"}</td>
            <td>${p.lag_revisions == null ? "–" : `${p.lag_revisions} revisions`}</td></tr>`)}</tbody>
      </table>
      ${error && html`<p class="error" role="alert">Airtime: ${error}</p>`}
      ${airtime && !airtime.known && html`<p>The downlink gate has not reported airtime yet.</p>`}
      ${airtime && airtime.known && html`
        <p>Window ${airtime.window_s} s · held ${airtime.held || 0} · refused ${airtime.refused || 0}</p>
        <table aria-label="Airtime per gateway, busiest first">
          <thead><tr><th>Gateway</th><th>Sub-band</th><th>Used</th><th>Budget</th><th>Use</th></tr></thead>
          <tbody>${gateways.slice(0, 12).map((g) => html`
            <tr key=${g.gateway_id + g.sub_band}><td>${g.gateway_id}</td><td>${g.sub_band}</td>
              <td>${(g.used_s || 0).toFixed(1)} s</td><td>${(g.budget_s || 0).toFixed(0)} s</td>
              <td>${Math.round((100 * (g.used_s || 0)) / (g.budget_s || 1))} %</td></tr>`)}</tbody>
        </table>`}
    </section>`;
}
