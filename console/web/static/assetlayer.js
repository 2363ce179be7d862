// Every fixed asset of the city, lamps included, and the lamp groups' circles, drawn by one
// small WebGL program in a MapLibre custom layer: places uploaded once, one byte of state
// per point, changed in place. As GeoJSON, the city's 38,109 fixed assets were copied to
// MapLibre's worker, cut into tiles and bucketed again, which was most of the first map's
// time on a busy machine, and every state change went through per-tile feature state;
// here a change is a byte in a buffer. The ISA-101 greys only (light: at rest, dark:
// working, hollow: not heard yet); the abnormal is drawn on top by the map's overlay, in
// colour and shape. A lamp group (at city zoom, where lamps are not drawn one by one) is a
// translucent grey disc sized by its lamps, its ring 1 px grey, or 3 px in the colour of
// its worst lamp's mark.
import { MercatorCoordinate } from "maplibre-gl";

const ASSET = 0;
const LAMP = 1;
const GROUP = 2;
const MARGIN = 4; // px around a point's circle for its ring and antialiasing

function rgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return `vec3(${((n >> 16) & 255) / 255}, ${((n >> 8) & 255) / 255}, ${(n & 255) / 255})`;
}

const VERTEX = `
attribute vec2 a_pos;
attribute float a_state; // an asset's display state; a group's ring: 0 grey, 1 + a mark's rank
attribute float a_kind;
attribute float a_size; // a group's radius (px)
uniform mat4 u_matrix;
uniform float u_radius;
uniform float u_lamps;
varying float v_state;
varying float v_kind;
varying float v_radius;
void main() {
  gl_Position = u_matrix * vec4(a_pos, 0.0, 1.0);
  // Close up, lamps one by one; else their groups. What is not drawn is clipped away.
  bool lamp = a_kind > 0.5 && a_kind < 1.5;
  bool group = a_kind > 1.5;
  if ((lamp && u_lamps < 0.5) || (group && u_lamps > 0.5)) gl_Position = vec4(0.0, 0.0, 2.0, 1.0);
  v_radius = group ? a_size : u_radius;
  gl_PointSize = 2.0 * (v_radius + ${MARGIN}.0);
  v_state = a_state;
  v_kind = a_kind;
}`;

function fragment(ringColours) {
  const rings = ringColours.map((hex, k) => `if (ring < ${k + 1}.5) return ${rgb(hex)};`).join("\n  ");
  return `
precision highp float; // as the vertex shader's: the varyings they share must match
varying float v_state;
varying float v_kind;
varying float v_radius;
vec3 ringColour(float ring) {
  if (ring < 0.5) return ${rgb("#6b6b6b")};
  ${rings}
  return ${rgb("#6b6b6b")};
}
void main() {
  float r = length(gl_PointCoord * 2.0 - 1.0) * (v_radius + ${MARGIN}.0); // px from the centre
  if (v_kind > 1.5) {
    float width = v_state > 0.5 ? 3.0 : 1.0;
    float alpha = clamp(v_radius + width + 0.5 - r, 0.0, 1.0);
    if (alpha <= 0.0) discard;
    // A translucent grey disc (#9a9a9a at 0.55), its ring outside it.
    vec4 colour = r > v_radius ? vec4(ringColour(v_state), 1.0) : vec4(vec3(0.604), 0.55);
    gl_FragColor = vec4(colour.rgb * colour.a * alpha, colour.a * alpha);
    return;
  }
  float alpha = clamp(v_radius + 0.5 - r, 0.0, 1.0);
  if (alpha <= 0.0) discard;
  // 0 not heard yet: hollow (#ececec, a #5e5e5e ring); 1 at rest #b0b0b0; else #5e5e5e.
  float grey = v_state < 0.5 ? (r > v_radius - 0.9 ? 0.369 : 0.925) : v_state < 1.5 ? 0.69 : 0.369;
  gl_FragColor = vec4(vec3(grey) * alpha, alpha);
}`;
}

// The assets' radius (px) by zoom: 1.6 at 10, 3.5 at 14, 6 at 17.
function radiusAt(zoom) {
  if (zoom <= 10) return 1.6;
  if (zoom <= 14) return 1.6 + ((zoom - 10) * (3.5 - 1.6)) / 4;
  return Math.min(6, 3.5 + ((zoom - 14) * (6 - 3.5)) / 3);
}

// A lamp group's radius (px) by its number of lamps: 3 for one, 14 for 1,600.
function groupRadius(n) {
  return 3 + ((Math.min(Math.sqrt(n), 40) - 1) * (14 - 3)) / 39;
}

function compile(gl, type, source) {
  const shader = gl.createShader(type);
  gl.shaderSource(shader, source);
  gl.compileShader(shader);
  if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
  return shader;
}

export class AssetLayer {
  // lampsFromZoom: lamps are drawn one by one from this zoom (below it, by their groups);
  // ringColours: a group ring's colour by its worst mark's rank.
  constructor(id, lampsFromZoom, ringColours) {
    this.id = id;
    this.type = "custom";
    this.renderingMode = "2d";
    this.lampsFromZoom = lampsFromZoom;
    this.ringColours = ringColours;
    this.clear();
  }

  // No points (before a login, after a logout): the next setAssets brings them.
  clear() {
    this.count = 0;
    this.rows = [];
    this.groupSlot = new Map();
    this.drawn = false; // a frame has drawn the points
  }

  // The points: the lamp groups' (`groups`: [{ id, lon, lat, n }], drawn first, under the
  // assets), then the rows that `drawn(i)` keeps (vehicles move, in their own source),
  // placed relative to their mean so that float32 keeps them to the millimetre at any zoom.
  setAssets(cols, drawn, isLamp, groups) {
    const rows = [];
    for (let i = 0; i < cols.eui.length; i += 1) if (drawn(i)) rows.push(i);
    const places = [...groups.map((g) => [g.lon, g.lat]), ...rows.map((i) => [cols.lon[i], cols.lat[i]])];
    const merc = places.map((p) => MercatorCoordinate.fromLngLat(p));
    this.origin = merc.reduce((o, m) => [o[0] + m.x / merc.length, o[1] + m.y / merc.length], [0, 0]);
    this.rows = rows;
    this.count = merc.length;
    this.pos = new Float32Array(this.count * 2);
    this.kind = new Uint8Array(this.count);
    this.size = new Float32Array(this.count);
    this.state = new Uint8Array(this.count);
    merc.forEach((m, k) => {
      this.pos[2 * k] = m.x - this.origin[0];
      this.pos[2 * k + 1] = m.y - this.origin[1];
    });
    this.groupSlot = new Map();
    groups.forEach((g, k) => {
      this.kind[k] = GROUP;
      this.size[k] = groupRadius(g.n);
      this.groupSlot.set(g.id, k);
    });
    this.slot = new Int32Array(cols.eui.length).fill(-1); // row -> point
    rows.forEach((i, j) => {
      const k = groups.length + j;
      this.slot[i] = k;
      this.kind[k] = isLamp(i) ? LAMP : ASSET;
    });
    this.uploaded = false;
    this.drawn = false;
    this.dirty = [Infinity, -1]; // the points whose state changed since the last upload
  }

  _touch(k) {
    if (k < this.dirty[0]) this.dirty[0] = k;
    if (k > this.dirty[1]) this.dirty[1] = k;
  }

  // Every row's state (a snapshot), or one row's.
  setStates(states) {
    this.rows.forEach((i) => { this.state[this.slot[i]] = states[i]; });
    this.dirty = [0, this.count - 1];
  }

  setState(i, value) {
    const k = this.slot[i];
    if (k < 0) return;
    this.state[k] = value;
    this._touch(k);
  }

  stateOf(i) {
    return this.slot[i] >= 0 ? this.state[this.slot[i]] : undefined;
  }

  // A lamp group's ring: its worst lamp's mark's rank, or -1 for none.
  setRing(group, rank) {
    const k = this.groupSlot.get(group);
    if (k === undefined || this.state[k] === rank + 1) return;
    this.state[k] = rank + 1;
    this._touch(k);
  }

  // The row drawn nearest a point of the map, within `px` pixels of its circle, or -1.
  nearest(map, point, px) {
    if (!this.count) return -1;
    const zoom = map.getZoom();
    const at = MercatorCoordinate.fromLngLat(map.unproject(point));
    const x = at.x - this.origin[0];
    const y = at.y - this.origin[1];
    const worldPx = 512 * 2 ** zoom; // MapLibre's world size in pixels at this zoom
    const lamps = zoom >= this.lampsFromZoom;
    let best = -1;
    let bestD = ((radiusAt(zoom) + px) / worldPx) ** 2;
    for (let k = 0; k < this.count; k += 1) {
      if (this.kind[k] === GROUP || (this.kind[k] === LAMP && !lamps)) continue;
      const d = (this.pos[2 * k] - x) ** 2 + (this.pos[2 * k + 1] - y) ** 2;
      if (d < bestD) { bestD = d; best = k; }
    }
    return best < 0 ? -1 : this.rows[best - this.groupSlot.size];
  }

  onAdd(map, gl) {
    this.map = map;
    const program = gl.createProgram();
    gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, VERTEX));
    gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, fragment(this.ringColours)));
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
    this.program = program;
    this.loc = Object.fromEntries(["a_pos", "a_state", "a_kind", "a_size"].map((n) => [n, gl.getAttribLocation(program, n)]));
    this.uni = Object.fromEntries(["u_matrix", "u_radius", "u_lamps"].map((n) => [n, gl.getUniformLocation(program, n)]));
    this.buffers = { pos: gl.createBuffer(), kind: gl.createBuffer(), size: gl.createBuffer(), state: gl.createBuffer() };
  }

  onRemove(map, gl) {
    for (const buffer of Object.values(this.buffers || {})) gl.deleteBuffer(buffer);
    if (this.program) gl.deleteProgram(this.program);
  }

  render(gl, args) {
    if (!this.count || !this.program) return;
    const { pos, kind, size, state } = this.buffers;
    if (!this.uploaded) {
      for (const [buffer, data] of [[pos, this.pos], [kind, this.kind], [size, this.size], [state, this.state]]) {
        gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
        gl.bufferData(gl.ARRAY_BUFFER, data, data === this.state ? gl.DYNAMIC_DRAW : gl.STATIC_DRAW);
      }
      this.uploaded = true;
      this.dirty = [Infinity, -1];
    } else if (this.dirty[1] >= 0) {
      const [from, to] = this.dirty;
      gl.bindBuffer(gl.ARRAY_BUFFER, state);
      gl.bufferSubData(gl.ARRAY_BUFFER, from, this.state.subarray(from, to + 1));
      this.dirty = [Infinity, -1];
    }
    gl.useProgram(this.program);
    // The map's matrix for Mercator [0, 1] coordinates, moved to the points' origin (in
    // float64 here, so that the float32 the shader gets loses nothing that shows).
    const m = args.defaultProjectionData.mainMatrix;
    const [ox, oy] = this.origin;
    const matrix = Float32Array.from(m);
    for (let r = 0; r < 4; r += 1) matrix[12 + r] = m[r] * ox + m[4 + r] * oy + m[12 + r];
    gl.uniformMatrix4fv(this.uni.u_matrix, false, matrix);
    const zoom = this.map.getZoom();
    gl.uniform1f(this.uni.u_radius, radiusAt(zoom));
    gl.uniform1f(this.uni.u_lamps, zoom >= this.lampsFromZoom ? 1 : 0);
    const attributes = [["a_pos", pos, 2, gl.FLOAT], ["a_kind", kind, 1, gl.UNSIGNED_BYTE],
      ["a_size", size, 1, gl.FLOAT], ["a_state", state, 1, gl.UNSIGNED_BYTE]];
    for (const [name, buffer, n, type] of attributes) {
      gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
      gl.enableVertexAttribArray(this.loc[name]);
      gl.vertexAttribPointer(this.loc[name], n, type, false, 0, 0);
    }
    gl.drawArrays(gl.POINTS, 0, this.count);
    for (const [name] of attributes) gl.disableVertexAttribArray(this.loc[name]);
    this.drawn = true;
  }
}
