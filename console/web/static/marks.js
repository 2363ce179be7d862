// What the map marks as abnormal, and where: pure (the map's columns, states, alarms and
// vehicles' positions in; marks out), so a test can run it in the browser on its own.
//
// An alarm is placed by its originator when that names a device (its devEui: the mark is
// at the device, or where a vehicle was last seen) or a gateway (`gateway/<id>`: at its
// site on the base map), else by its group (a zone's air quality, an emergency command to
// a group of lamps: at the middle of the group's devices). A device with no alarm is still
// marked when its display state is a fault (5) or something to look at (4).
const ALARM_LEVEL = { CRITICAL: "critical", MAJOR: "major", MINOR: "minor", WARNING: "minor", INFO: "minor" };
const CLEARED = new Set(["CLEARED_UNACK", "CLEARED_ACK", "CLEARED"]);
// Lower draws on top: alarms by priority, then faults, then the rest.
export const RANK = { critical: 0, major: 1, minor: 2, fault: 3, attention: 4 };
const GATEWAY_PREFIX = "gateway/";
const LAMP = 1;

// gatewaySites: Map gateway id -> [lon, lat] (the base map's "gateway" features).
export function placer(cols, gatewaySites) {
  const index = new Map(cols.eui.map((eui, i) => [eui, i]));
  const groupOf = new Map(cols.groups.map((name, g) => [name, g]));
  const centres = new Map();
  function centreOf(g) {
    if (!centres.has(g)) {
      let n = 0, lon = 0, lat = 0;
      cols.grp.forEach((grp, i) => { if (grp === g) { n += 1; lon += cols.lon[i]; lat += cols.lat[i]; } });
      centres.set(g, n ? [lon / n, lat / n] : null);
    }
    return centres.get(g);
  }
  return {
    index,
    // [lon, lat] of what an originator (else a group) names, or null when the map has no
    // place for it.
    placeOf(originator, positions, group = "") {
      const i = index.get(originator);
      if (i !== undefined) {
        const p = positions.get(i);
        return p ? [p[1], p[0]] : [cols.lon[i], cols.lat[i]];
      }
      if (originator.startsWith(GATEWAY_PREFIX)) return gatewaySites.get(originator.slice(GATEWAY_PREFIX.length)) || null;
      const g = groupOf.get(group);
      return g === undefined ? null : centreOf(g);
    },
  };
}

// The marks: GeoJSON features (id: the device's row, or past the rows for a gateway or a
// zone), and each lamp group's worst mark (lamps are drawn one by one only close up, so
// their group's circle carries it at city zoom).
export function abnormalMarks({ cols, states, alarms, positions, places }) {
  const worst = new Map(); // originator -> mark
  const groupOf = new Map(); // originator -> its alarm's group
  for (const alarm of alarms) {
    const level = ALARM_LEVEL[alarm.severity];
    if (!level || CLEARED.has(alarm.state) || alarm.suppressed_by) continue;
    const seen = worst.get(alarm.originator);
    if (!seen || RANK[level] < RANK[seen]) worst.set(alarm.originator, level);
    groupOf.set(alarm.originator, alarm.group || "");
  }
  const features = [];
  const lampGroups = new Map(); // group -> worst mark
  const add = (id, at, mark, originator) => features.push({ type: "Feature", id,
    geometry: { type: "Point", coordinates: at }, properties: { mark, rank: RANK[mark], originator } });
  for (let i = 0; i < states.length; i += 1) {
    const eui = cols.eui[i];
    const mark = worst.get(eui) || (states[i] === 5 ? "fault" : states[i] === 4 ? "attention" : null);
    if (!mark) continue;
    add(i, places.placeOf(eui, positions), mark, eui);
    if (cols.cls[i] === LAMP) {
      const seen = lampGroups.get(cols.grp[i]);
      if (!seen || RANK[mark] < RANK[seen]) lampGroups.set(cols.grp[i], mark);
    }
  }
  let next = states.length;
  for (const [originator, mark] of worst) {
    if (places.index.has(originator)) continue;
    const at = places.placeOf(originator, positions, groupOf.get(originator));
    if (at) add((next += 1), at, mark, originator);
  }
  return { features, lampGroups };
}
