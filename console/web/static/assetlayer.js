// Every fixed asset of the city, lamps included, drawn by one small WebGL program in a
// MapLibre custom layer: places uploaded once, display states one byte per asset, changed
// in place. As GeoJSON, the city's 38,702 assets were copied to MapLibre's worker, cut into
// tiles and bucketed again, which was most of the first map's time on a busy machine, and
// every state change went through per-tile feature state; here a change is a byte in a
// buffer. The ISA-101 greys only (light: at rest, dark: working, hollow: not heard yet);
// the abnormal is drawn on top by the map's overlay, in colour and shape.
import { MercatorCoordinate } from "maplibre-gl";

const VERTEX = `
attribute vec2 a_pos;
attribute float a_state;
attribute float a_lamp;
uniform mat4 u_matrix;
uniform float u_radius;
uniform float u_lamps;
varying float v_state;
void main() {
  gl_Position = u_matrix * vec4(a_pos, 0.0, 1.0);
  // Lamps one by one only close up (their groups' circles at city zoom): clipped away.
  if (a_lamp > 0.5 && u_lamps < 0.5) gl_Position = vec4(0.0, 0.0, 2.0, 1.0);
  gl_PointSize = 2.0 * u_radius + 2.0;
  v_state = a_state;
}`;
const FRAGMENT = `
precision highp float; // as the vertex shader's: the uniform they share must match
varying float v_state;
uniform float u_radius;
void main() {
  float r = length(gl_PointCoord * 2.0 - 1.0) * (u_radius + 1.0);
  float alpha = clamp(u_radius + 0.5 - r, 0.0, 1.0);
  if (alpha <= 0.0) discard;
  // 0 not heard yet: hollow (#ececec, a #5e5e5e ring); 1 at rest #b0b0b0; else #5e5e5e.
  float grey = v_state < 0.5 ? (r > u_radius - 0.9 ? 0.369 : 0.925) : v_state < 1.5 ? 0.69 : 0.369;
  gl_FragColor = vec4(vec3(grey) * alpha, alpha);
}`;

// The circles' radius (px) by zoom, as the map's other circles: 1.6 at 10, 3.5 at 14, 6 at 17.
export function radiusAt(zoom) {
  if (zoom <= 10) return 1.6;
  if (zoom <= 14) return 1.6 + ((zoom - 10) * (3.5 - 1.6)) / 4;
  return Math.min(6, 3.5 + ((zoom - 14) * (6 - 3.5)) / 3);
}

function compile(gl, type, source) {
  const shader = gl.createShader(type);
  gl.shaderSource(shader, source);
  gl.compileShader(shader);
  if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
  return shader;
}

export class AssetLayer {
  // lampsFromZoom: lamps are drawn from this zoom (below it, by their groups).
  constructor(id, lampsFromZoom) {
    this.id = id;
    this.type = "custom";
    this.renderingMode = "2d";
    this.lampsFromZoom = lampsFromZoom;
    this.count = 0;
    this.drawn = false; // a frame has drawn the assets
  }

  // The rows' places (relative to their mean, so that float32 keeps them to the
  // millimetre at any zoom) and which rows are lamps; `drawn(i)`: whether row i is drawn
  // here (vehicles are not: they move, in their own source).
  setAssets(cols, drawn, isLamp) {
    const rows = [];
    for (let i = 0; i < cols.eui.length; i += 1) if (drawn(i)) rows.push(i);
    const merc = rows.map((i) => MercatorCoordinate.fromLngLat([cols.lon[i], cols.lat[i]]));
    this.origin = merc.reduce((o, m) => [o[0] + m.x / merc.length, o[1] + m.y / merc.length], [0, 0]);
    this.rows = rows;
    this.slot = new Int32Array(cols.eui.length).fill(-1); // row -> slot in the buffers
    this.pos = new Float32Array(rows.length * 2);
    this.lamp = new Uint8Array(rows.length);
    this.state = new Uint8Array(rows.length);
    rows.forEach((i, k) => {
      this.slot[i] = k;
      this.pos[2 * k] = merc[k].x - this.origin[0];
      this.pos[2 * k + 1] = merc[k].y - this.origin[1];
      this.lamp[k] = isLamp(i) ? 1 : 0;
    });
    this.count = rows.length;
    this.uploaded = false;
    this.dirty = [Infinity, -1];
  }

  // Every row's state (a snapshot), or one row's.
  setStates(states) {
    this.rows.forEach((i, k) => { this.state[k] = states[i]; });
    this.dirty = [0, this.count - 1];
  }

  setState(i, value) {
    const k = this.slot[i];
    if (k < 0) return;
    this.state[k] = value;
    if (k < this.dirty[0]) this.dirty[0] = k;
    if (k > this.dirty[1]) this.dirty[1] = k;
  }

  // The row drawn nearest a point of the map, within `px` pixels of its circle, or -1.
  nearest(map, point, px) {
    if (!this.count) return -1;
    const zoom = map.getZoom();
    const at = MercatorCoordinate.fromLngLat(map.unproject(point));
    const x = at.x - this.origin[0];
    const y = at.y - this.origin[1];
    const worldPx = 512 * 2 ** zoom; // MapLibre's world size in pixels at this zoom
    let best = -1;
    let bestD = ((radiusAt(zoom) + px) / worldPx) ** 2;
    const lamps = zoom >= this.lampsFromZoom;
    for (let k = 0; k < this.count; k += 1) {
      if (this.lamp[k] && !lamps) continue;
      const d = (this.pos[2 * k] - x) ** 2 + (this.pos[2 * k + 1] - y) ** 2;
      if (d < bestD) { bestD = d; best = this.rows[k]; }
    }
    return best;
  }

  onAdd(map, gl) {
    this.map = map;
    const program = (this.program = gl.createProgram());
    gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, VERTEX));
    gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, FRAGMENT));
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
    this.loc = Object.fromEntries(["a_pos", "a_state", "a_lamp"].map((n) => [n, gl.getAttribLocation(program, n)]));
    this.uni = Object.fromEntries(["u_matrix", "u_radius", "u_lamps"].map((n) => [n, gl.getUniformLocation(program, n)]));
    this.buffers = { pos: gl.createBuffer(), lamp: gl.createBuffer(), state: gl.createBuffer() };
  }

  onRemove(map, gl) {
    for (const buffer of Object.values(this.buffers || {})) gl.deleteBuffer(buffer);
    if (this.program) gl.deleteProgram(this.program);
  }

  render(gl, args) {
    if (!this.count || !this.program) return;
    const { pos, lamp, state } = this.buffers;
    if (!this.uploaded) {
      for (const [buffer, data] of [[pos, this.pos], [lamp, this.lamp], [state, this.state]]) {
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
    // The map's matrix for Mercator [0, 1] coordinates, moved to the rows' origin (in
    // float64 here, so that the float32 the shader gets loses nothing that shows).
    const m = args.defaultProjectionData.mainMatrix;
    const [ox, oy] = this.origin;
    const matrix = Float32Array.from(m);
    for (let r = 0; r < 4; r += 1) matrix[12 + r] = m[r] * ox + m[4 + r] * oy + m[12 + r];
    gl.uniformMatrix4fv(this.uni.u_matrix, false, matrix);
    const zoom = this.map.getZoom();
    gl.uniform1f(this.uni.u_radius, radiusAt(zoom));
    gl.uniform1f(this.uni.u_lamps, zoom >= this.lampsFromZoom ? 1 : 0);
    for (const [name, buffer, size, type] of [["a_pos", pos, 2, gl.FLOAT], ["a_lamp", lamp, 1, gl.UNSIGNED_BYTE],
      ["a_state", state, 1, gl.UNSIGNED_BYTE]]) {
      gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
      gl.enableVertexAttribArray(this.loc[name]);
      gl.vertexAttribPointer(this.loc[name], size, type, false, 0, 0);
    }
    gl.drawArrays(gl.POINTS, 0, this.count);
    for (const name of ["a_pos", "a_lamp", "a_state"]) gl.disableVertexAttribArray(this.loc[name]);
    this.drawn = true;
  }
}
