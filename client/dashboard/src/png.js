// PNG text chunks: the parameters of a run written into its downloaded image, as image tools
// do (a "parameters" chunk), so that the file remembers how it was made.

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

let crcTable = null;

/** The CRC-32 a PNG chunk ends with (of its type and data). */
export function crc32(bytes) {
  if (crcTable === null) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n += 1) {
      let c = n;
      for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (const byte of bytes) crc = crcTable[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  const typed = new TextEncoder().encode(type);
  out.set(typed, 4);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

// tEXt holds Latin-1 only; anything else goes in an uncompressed iTXt, which is UTF-8.
function textChunk(keyword, text) {
  const key = new TextEncoder().encode(keyword);
  if ([...text].every((ch) => ch.codePointAt(0) <= 0xff)) {
    const body = Uint8Array.from([...text].map((ch) => ch.codePointAt(0)));
    return chunk("tEXt", concat([key, [0], body]));
  }
  return chunk("iTXt", concat([key, [0, 0, 0, 0, 0], new TextEncoder().encode(text)]));
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** `png` (bytes) with a text chunk per `[keyword, text]` after its header chunk. */
export function withTextChunks(png, entries) {
  if (!SIGNATURE.every((byte, i) => png[i] === byte)) throw new Error("not a PNG");
  const headerEnd = 8 + 12 + new DataView(png.buffer, png.byteOffset).getUint32(8);
  return concat([
    png.subarray(0, headerEnd),
    ...entries.map(([keyword, text]) => textChunk(keyword, text)),
    png.subarray(headerEnd),
  ]);
}

/** The text chunks of `png`: `{keyword: text}` (for tests and for reading a file back). */
export function textChunks(png) {
  const found = {};
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  for (let at = 8; at + 12 <= png.length;) {
    const length = view.getUint32(at);
    const type = new TextDecoder().decode(png.subarray(at + 4, at + 8));
    const data = png.subarray(at + 8, at + 8 + length);
    const zero = data.indexOf(0);
    const keyword = new TextDecoder().decode(data.subarray(0, zero));
    if (type === "tEXt") found[keyword] = String.fromCharCode(...data.subarray(zero + 1));
    if (type === "iTXt") found[keyword] = new TextDecoder().decode(data.subarray(zero + 5));
    at += 12 + length;
  }
  return found;
}
