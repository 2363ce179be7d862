// Commands from the room: a dialog that resolves the target (how many devices, which group
// and communes, from the map's rows) and asks for confirmation; the commands' progress as
// the posts report it; and the approvals panel where a second person approves or rejects
// a dangerous command. The posts decide what needs approval and who may give it: the page
// shows their answer.
import { h } from "preact";
import { useState } from "preact/hooks";
import htm from "htm";
import { newKey, rpc } from "/static/api.js";

const html = htm.bind(h);

export const COMMANDABLE = {
  STREET_LAMP: { code: 1, label: "Street lamps" },
  BOLLARD: { code: 3, label: "Bollards" },
  TRAFFIC_SIGNAL: { code: 2, label: "Traffic signals" },
};


// {className: {group: {n, communes}}} from the map's columns.
export function groupsOf(cols) {
  const out = {};
  for (const [name, { code }] of Object.entries(COMMANDABLE)) out[name] = {};
  const byCode = Object.fromEntries(Object.entries(COMMANDABLE).map(([name, c]) => [c.code, name]));
  cols.cls.forEach((cls, i) => {
    const name = byCode[cls];
    if (!name) return;
    const group = cols.groups[cols.grp[i]];
    const entry = (out[name][group] ||= { n: 0, communes: new Set() });
    entry.n += 1;
    entry.communes.add(cols.communes[cols.com[i]]);
  });
  return out;
}

function actionOf(cls, form) {
  if (cls === "STREET_LAMP") {
    const pct = Number(form.get("brightness"));
    return { action: { set_brightness: { brightness_pct: pct } }, words: `set brightness to ${pct} %` };
  }
  if (cls === "BOLLARD") {
    const position = form.get("position");
    return { action: { set_bollard_position: { position } }, words: position === "RAISED" ? "raise" : "lower" };
  }
  const mode = form.get("mode");
  if (mode === "PRIORITY") {
    const ms = Number(form.get("extend")) * 1000;
    return { action: { signal_priority: { extend_green_ms: ms } }, words: `extend green by ${ms / 1000} s` };
  }
  return { action: { set_signal_mode: { phase: mode } }, words: mode === "FLASHING_AMBER" ? "put in fail-safe flashing amber" : `set phase ${mode}` };
}

export function CommandDialog({ groups, token, leading, commands }) {
  const [cls, setCls] = useState("STREET_LAMP");
  const [review, setReview] = useState(null);
  const [sent, setSent] = useState(null);
  const [error, setError] = useState("");
  const choices = groups ? Object.entries(groups[cls]).sort(([a], [b]) => a.localeCompare(b)) : [];

  function prepare(event) {
    event.preventDefault();
    const form = new FormData(event.target);
    const group = form.get("group");
    const info = groups[cls][group];
    const { action, words } = actionOf(cls, form);
    setError("");
    setReview({
      request: {
        command: { asset_class: cls, target: { group }, ...action },
        reason: form.get("reason") || "",
      },
      summary: `${words}: ${info.n} ${COMMANDABLE[cls].label.toLowerCase()} of group ${group} (${[...info.communes].join(", ")})`,
    });
  }

  async function confirm() {
    try {
      const record = await rpc("OperatorService/SendCommand", { idempotency_key: newKey(), ...review.request }, token());
      setSent(record.command.command_id);
      setReview(null);
    } catch (e) {
      setError(e.message);
    }
  }

  const live = sent && commands.get(sent);
  return html`
    <section class="commands" aria-labelledby="commands-title">
      <h2 id="commands-title">Send a command</h2>
      ${!review && html`
        <form onSubmit=${prepare} aria-label="Command">
          <label>Assets <select name="cls" value=${cls} onChange=${(e) => setCls(e.target.value)}>
            ${Object.entries(COMMANDABLE).map(([name, c]) => html`<option value=${name}>${c.label}</option>`)}
          </select></label>
          <label>Group <select name="group" required>
            ${choices.map(([group, info]) => html`<option value=${group}>${group} (${info.n})</option>`)}
          </select></label>
          ${cls === "STREET_LAMP" && html`<label>Brightness (%) <input name="brightness" type="number" min="0" max="100" defaultValue="60" required /></label>`}
          ${cls === "BOLLARD" && html`<label>Position <select name="position"><option value="RAISED">raised</option><option value="LOWERED">lowered</option></select></label>`}
          ${cls === "TRAFFIC_SIGNAL" && html`<label>Action <select name="mode">
            <option value="PRIORITY">extend green</option><option value="FLASHING_AMBER">fail-safe flashing amber</option></select></label>
            <label>Extend green by (s) <input name="extend" type="number" min="1" max="15" defaultValue="10" /></label>`}
          <label>Reason <input name="reason" maxlength="500" /></label>
          <button type="submit" disabled=${!leading || !groups}>Review…</button>
        </form>`}
      ${review && html`
        <div role="dialog" aria-modal="false" aria-labelledby="review-title" class="review">
          <h3 id="review-title">Confirm the command</h3>
          <p>${review.summary}</p>
          <p class="keys">A dangerous command waits for a second person's approval; the posts decide.</p>
          <button onClick=${confirm} disabled=${!leading}>Send</button>
          <button onClick=${() => setReview(null)}>Back</button>
        </div>`}
      ${error && html`<p class="error" role="alert">${error}</p>`}
      ${live && html`<p role="status" class="command-status">Command ${live.command.command_id.slice(0, 8)}: ${live.status}
        ${live.status === "PENDING_APPROVAL" ? " (waiting for approval)" : ""}
        ${live.expected_acks ? ` · ${live.acked_count || 0} of ${live.expected_acks} confirmed` : ""}</p>`}
    </section>`;
}

export function Approvals({ commands, token, leading }) {
  const [message, setMessage] = useState("");
  const pending = [...commands.values()].filter((c) => c.status === "PENDING_APPROVAL");
  async function decide(verb, record) {
    let reason = "";
    if (verb === "RejectCommand") {
      reason = prompt("Reject: the reason") || "";
      if (!reason) return;
    }
    try {
      await rpc(`OperatorService/${verb}`, { idempotency_key: newKey(), command_id: record.command.command_id, reason }, token());
      setMessage(`${verb === "ApproveCommand" ? "Approved" : "Rejected"} ${record.command.command_id.slice(0, 8)}`);
    } catch (e) {
      setMessage(`${record.command.command_id.slice(0, 8)}: ${e.message}`);
    }
  }
  return html`
    <section class="approvals" aria-labelledby="approvals-title">
      <h2 id="approvals-title">Approvals (${pending.length})</h2>
      ${pending.length === 0 ? html`<p>No command waits for approval.</p>` : html`
        <table aria-label="Commands waiting for approval">
          <thead><tr><th>Command</th><th>Asked by</th><th>Why it needs approval</th><th>Decide by</th><th></th></tr></thead>
          <tbody>${pending.map((c) => html`
            <tr key=${c.command.command_id}>
              <td>${c.command.asset_class} → ${c.command.target.group || c.command.target.dev_eui}</td>
              <td>${c.issued_by}</td><td>${c.approval.danger}</td>
              <td>${new Date(Number(c.approval.approve_by_ms)).toLocaleTimeString()}</td>
              <td><button onClick=${() => decide("ApproveCommand", c)} disabled=${!leading}>Approve</button>
                <button onClick=${() => decide("RejectCommand", c)} disabled=${!leading}>Reject</button></td>
            </tr>`)}</tbody>
        </table>`}
      ${message && html`<p role="status">${message}</p>`}
    </section>`;
}

export function RecentCommands({ commands }) {
  const rows = [...commands.values()]
    .sort((a, b) => Number(b.created_at_ms || 0) - Number(a.created_at_ms || 0)).slice(0, 8);
  return html`
    <section class="recent" aria-labelledby="recent-title">
      <h2 id="recent-title">Recent commands</h2>
      <table aria-label="Recent commands, newest first">
        <thead><tr><th>Target</th><th>By</th><th>Status</th><th>Confirmed</th></tr></thead>
        <tbody>${rows.map((c) => html`
          <tr key=${c.command.command_id}>
            <td>${c.command.asset_class} → ${c.command.target.group || c.command.target.dev_eui}</td>
            <td>${c.issued_by}</td><td>${c.status}</td>
            <td>${c.acked_count || 0} / ${c.expected_acks || 1}</td></tr>`)}</tbody>
      </table>
    </section>`;
}
