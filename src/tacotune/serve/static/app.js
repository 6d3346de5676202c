// The tacotune web page: plain JavaScript, no build step, talks only to this server.
"use strict";

const $ = (id) => document.getElementById(id);

// what each format is sent as, and the name of its file
const FORMATS = {
  mp3: { mime: "audio/mpeg", ext: "mp3" },
  opus: { mime: 'audio/ogg; codecs="opus"', ext: "opus" },
  aac: { mime: "audio/aac", ext: "aac" },
  flac: { mime: "audio/flac", ext: "flac" },
  wav: { mime: "audio/wav", ext: "wav" },
  pcm: { mime: "application/octet-stream", ext: "pcm" }, // raw 16-bit mono little-endian
};
const FALLBACK_FORMAT = "wav"; // every tacotune server writes it

const state = { busy: false, url: null, playUrl: null, pieces: null };

const number = (value, digits) =>
  value.toLocaleString("ru-RU", { minimumFractionDigits: digits, maximumFractionDigits: digits });

// A header value is bytes: the key goes as its UTF-8 bytes, which the server compares
// (fetch refuses characters above U+00FF, such as Cyrillic, as they are).
const utf8Bytes = (text) => String.fromCharCode(...new TextEncoder().encode(text));

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  if (key) h["Authorization"] = "Bearer " + utf8Bytes(key);
  return h;
}

function status(text, isError) {
  const line = $("status");
  line.setAttribute("aria-live", isError ? "assertive" : "polite");
  line.className = isError ? "error" : "";
  line.textContent = text;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body.error) return body.error;
    return { message: JSON.stringify(body) };
  } catch (e) {
    return { message: `${response.status} ${response.statusText}` };
  }
}

async function loadVoices() {
  const health = await (await fetch("/health")).json();
  $("key-row").hidden = !health.auth_required;
  const response = await fetch("/v1/voices", { headers: headers() });
  if (!response.ok) {
    status("Не удалось получить список голосов: " + (await errorOf(response)).message, true);
    return;
  }
  const select = $("voice");
  select.replaceChildren();
  for (const voice of (await response.json()).voices) {
    const option = document.createElement("option");
    option.value = voice.name;
    option.textContent = `${voice.name} (${voice.source}, ${voice.vocoder})`;
    select.appendChild(option);
  }
}

function bytesOf(base64) {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

// raw 16-bit mono pcm -> a wav the player can read
function wavOf(pcm, rate) {
  const head = new DataView(new ArrayBuffer(44));
  const ascii = (at, text) => [...text].forEach((c, i) => head.setUint8(at + i, c.charCodeAt(0)));
  ascii(0, "RIFF");
  head.setUint32(4, 36 + pcm.length, true);
  ascii(8, "WAVEfmt ");
  head.setUint32(16, 16, true); // fmt chunk size
  head.setUint16(20, 1, true); // integer pcm
  head.setUint16(22, 1, true); // one channel
  head.setUint32(24, rate, true);
  head.setUint32(28, rate * 2, true); // bytes per second
  head.setUint16(32, 2, true); // bytes per frame
  head.setUint16(34, 16, true); // bits per sample
  ascii(36, "data");
  head.setUint32(40, pcm.length, true);
  return new Blob([head.buffer, pcm], { type: "audio/wav" });
}

// "tiny-привет-это-синтез.mp3": the voice and the first words of the text
function fileName(voice, text, ext) {
  const words = text.toLowerCase().match(/[\p{L}\p{N}]+/gu) || [];
  const start = words.slice(0, 4).join("-").slice(0, 40) || "речь";
  return `${voice}-${start}.${ext}`;
}

// Forget the last answer: stop its sound, free its file, hide its alignment.
function clearResult() {
  const audio = $("audio");
  audio.pause();
  audio.removeAttribute("src");
  audio.load();
  for (const url of [state.url, state.playUrl]) if (url) URL.revokeObjectURL(url);
  state.url = state.playUrl = state.pieces = null;
  const link = $("download");
  link.removeAttribute("href");
  link.download = "";
  link.textContent = "Скачать";
  const canvas = $("alignment");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  canvas.setAttribute("aria-label", "Карта выравнивания");
  $("pieces").querySelector("tbody").replaceChildren();
  $("result").hidden = true;
}

async function request(format) {
  return fetch("/v1/synthesize", {
    method: "POST",
    headers: headers(),
    body: JSON.stringify({
      voice: $("voice").value,
      text: $("text").value,
      format,
      speed: Number($("speed").value),
      alignment: true,
    }),
  });
}

// The answer in the chosen format; a format this server does not write falls back to wav.
async function synthesize() {
  const select = $("format");
  const format = select.value;
  let response = await request(format);
  if (response.ok || format === FALLBACK_FORMAT) return { response, note: "" };
  const error = await errorOf(response);
  if (error.code !== "unsupported_format") return { response, error };
  const option = select.querySelector(`option[value="${format}"]`);
  option.disabled = true;
  option.textContent += " — сервер не поддерживает";
  select.value = FALLBACK_FORMAT;
  response = await request(FALLBACK_FORMAT);
  const name = format.toUpperCase();
  return { response, note: ` Сервер не умеет ${name}, поэтому файл в WAV.` };
}

function showAudio(result) {
  const format = FORMATS[result.format] || FORMATS[FALLBACK_FORMAT];
  const bytes = bytesOf(result.audio);
  const file = new Blob([bytes], { type: format.mime });
  state.url = URL.createObjectURL(file);
  const link = $("download");
  const name = fileName(result.voice, $("text").value, format.ext);
  link.href = state.url;
  link.download = name;
  link.textContent = `Скачать ${name} (${number(bytes.length / 1024, 0)} КБ)`;
  const audio = $("audio");
  const playable = result.format === "pcm" ? wavOf(bytes, result.sample_rate) : file;
  if (audio.canPlayType(playable.type) === "") return false;
  state.playUrl = URL.createObjectURL(playable);
  audio.src = state.playUrl;
  return true;
}

async function speak() {
  if (state.busy) return;
  state.busy = true;
  $("speak").setAttribute("aria-disabled", "true");
  $("form").setAttribute("aria-busy", "true");
  clearResult();
  status("Синтезирую…", false);
  try {
    const { response, error, note } = await synthesize();
    if (!response.ok) {
      status("Ошибка: " + (error || (await errorOf(response))).message, true);
      return;
    }
    const result = await response.json();
    const playable = showAudio(result);
    state.pieces = result.pieces;
    listPieces(result.pieces);
    $("result").hidden = false;
    drawAlignment(result.pieces);
    status(summary(result, playable) + (note || ""), false);
    if (playable) $("audio").play().catch(() => {}); // autoplay may be refused: the controls stay
  } catch (error) {
    clearResult();
    status("Не получилось: " + error, true);
  } finally {
    state.busy = false;
    $("speak").removeAttribute("aria-disabled");
    $("form").removeAttribute("aria-busy");
  }
}

function summary(result, playable) {
  const t = result.timing;
  return (
    `Готово: ${number(result.seconds, 2)} с речи за ${number(t.total_seconds, 2)} с ` +
    `(коэффициент реального времени ${number(t.rtf, 2)}).` +
    (result.complete ? "" : " Внимание: модель остановилась, не дочитав текст.") +
    (playable ? "" : ` Браузер не проигрывает ${result.format.toUpperCase()}: файл можно скачать.`)
  );
}

const STOP_REASONS = { gate: "по сигналу модели", end_of_text: "в конце текста", max_steps: "по лимиту шагов" };

function listPieces(pieces) {
  const body = $("pieces").querySelector("tbody");
  for (const p of pieces) {
    const row = document.createElement("tr");
    const cells = [p.index + 1, p.text, number(p.seconds, 2), STOP_REASONS[p.stop_reason] || p.stop_reason,
                   p.reached_end ? "да" : "нет"];
    for (const value of cells) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.appendChild(cell);
    }
    body.appendChild(row);
  }
}

// weight in [0, 1] -> near white .. deep blue (a light "Blues" scale); the square root
// keeps attention spread over many characters visible next to a sharp peak
const SCALE = [[247, 251, 255], [158, 202, 225], [66, 146, 198], [8, 48, 107]];
function colour(t) {
  const x = Math.sqrt(Math.min(Math.max(t, 0), 1)) * (SCALE.length - 1);
  const i = Math.min(Math.floor(x), SCALE.length - 2);
  const f = x - i;
  return SCALE[i].map((a, k) => Math.round(a + (SCALE[i + 1][k] - a) * f));
}

// a round step between ticks that leaves at least `room` pixels between them
function tickStep(count, pixels, room) {
  for (let base = 1; ; base *= 10)
    for (const m of [1, 2, 5]) if ((base * m * pixels) / count >= room) return base * m;
}

const LABEL_ROOM = 10; // px a character or word label needs
const MONO = "ui-monospace, 'DejaVu Sans Mono', monospace";

// The y labels (row: index of the character the label stands at): every character the
// model read (spaces shown as ␣, the end-of-text mark as ∎) where rows are tall enough,
// else the first row of every word that has room.
function yLabels(pieces, row) {
  const labels = [];
  let y0 = 0;
  for (const { text, alignment } of pieces) {
    if (row >= LABEL_ROOM) {
      const chars = Array.from(text);
      for (let i = 0; i < alignment.chars; i++)
        labels.push({ text: chars[i] === " " ? "␣" : (chars[i] ?? "∎"), row: y0 + i });
    } else {
      for (const word of text.matchAll(/\S+/g)) {
        const at = y0 + word.index;
        const last = labels[labels.length - 1];
        if (last && (at - last.row) * row < LABEL_ROOM + 2) continue;
        const clean = word[0].replaceAll("+", "");
        labels.push({ text: clean.length > 12 ? clean.slice(0, 11) + "…" : clean, row: at });
      }
    }
    y0 += alignment.chars;
  }
  return labels;
}

// (steps, chars) image of every piece's weights: pieces one after another, decoder steps
// left to right, the characters of each piece below the previous piece's
function heatMap(pieces, steps, chars) {
  const image = new ImageData(Math.max(steps, 1), Math.max(chars, 1));
  const blank = [...colour(0), 255];
  for (let i = 0; i < image.data.length; i += 4) image.data.set(blank, i);
  let [x0, y0] = [0, 0];
  for (const piece of pieces) {
    const { steps: s, chars: n, data } = piece.alignment;
    const weights = bytesOf(data); // row-major (step, char)
    for (let step = 0; step < s; step++)
      for (let c = 0; c < n; c++)
        image.data.set([...colour(weights[step * n + c] / 255), 255], ((y0 + c) * image.width + x0 + step) * 4);
    [x0, y0] = [x0 + s, y0 + n];
  }
  const scratch = document.createElement("canvas");
  [scratch.width, scratch.height] = [image.width, image.height];
  scratch.getContext("2d").putImageData(image, 0, 0);
  return scratch;
}

// The alignment with its axes: a good reading is one diagonal from the top left.
function drawAlignment(pieces) {
  const steps = pieces.reduce((sum, p) => sum + p.alignment.steps, 0);
  const chars = pieces.reduce((sum, p) => sum + p.alignment.chars, 0);
  const canvas = $("alignment");
  canvas.setAttribute("aria-label", `Карта выравнивания: ${steps} шагов декодера, ${chars} символов`);
  const row = Math.min(14, Math.max(3, 560 / chars));
  const height = Math.min(chars * row, 1200);
  const labels = yLabels(pieces, height / chars);
  const ratio = window.devicePixelRatio || 1;
  const g = canvas.getContext("2d");
  g.font = `11px ${MONO}`;
  const widest = Math.max(...labels.map((l) => g.measureText(l.text).width), 0);
  const box = { left: 34 + widest, top: 10, w: 0, h: height };
  box.w = canvas.clientWidth - box.left - 12;
  const total = height + box.top + 42;
  canvas.style.height = `${total}px`;
  canvas.width = Math.round(canvas.clientWidth * ratio);
  canvas.height = Math.round(total * ratio);
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.fillStyle = "#fff";
  g.fillRect(0, 0, canvas.clientWidth, total);
  g.imageSmoothingEnabled = false;
  g.drawImage(heatMap(pieces, steps, chars), box.left, box.top, box.w, box.h);
  drawAxes(g, box, pieces, labels, steps, chars);
}

function drawAxes(g, box, pieces, labels, steps, chars) {
  const { left, top, w, h } = box;
  const row = h / chars;
  g.strokeStyle = "#888";
  g.lineWidth = 1;
  g.strokeRect(left - 0.5, top - 0.5, w + 1, h + 1);
  g.fillStyle = "#333";
  g.font = `11px ${MONO}`;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (const label of labels) g.fillText(label.text, left - 6, top + (label.row + 0.5) * row);
  g.textAlign = "center";
  g.textBaseline = "top";
  const step = tickStep(steps, w, 56);
  for (let s = 0; s <= steps; s += step) {
    const x = left + (s / steps) * w;
    g.fillRect(Math.round(x), top + h, 1, 5);
    g.fillText(String(s), x, top + h + 7);
  }
  g.setLineDash([4, 3]); // borders between pieces
  g.strokeStyle = "#c33";
  let [x0, y0] = [0, 0];
  for (const piece of pieces.slice(0, -1)) {
    [x0, y0] = [x0 + piece.alignment.steps, y0 + piece.alignment.chars];
    const [x, y] = [left + (x0 / steps) * w, top + y0 * row];
    g.beginPath();
    g.moveTo(x, top);
    g.lineTo(x, top + h);
    g.moveTo(left, y);
    g.lineTo(left + w, y);
    g.stroke();
  }
  g.setLineDash([]);
  g.font = "13px system-ui, sans-serif";
  g.fillText("шаги декодера →", left + w / 2, top + h + 24);
  g.save();
  g.translate(12, top + h / 2);
  g.rotate(-Math.PI / 2);
  g.textBaseline = "middle";
  g.fillText("← символы текста", 0, 0);
  g.restore();
}

function showSpeed() {
  const text = number(Number($("speed").value), 2) + "×";
  $("speed-value").textContent = text;
  $("speed").setAttribute("aria-valuetext", text);
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  speak();
});
$("text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    speak();
  }
});
$("speed").addEventListener("input", showSpeed);
$("key").addEventListener("change", loadVoices);
window.addEventListener("resize", () => {
  if (state.pieces) drawAlignment(state.pieces);
});
showSpeed();
loadVoices().catch((error) => status("Сервер не отвечает: " + error, true));
