// The tacotune web page: plain JavaScript, no build step, talks only to this server.
"use strict";

const $ = (id) => document.getElementById(id);

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : JSON.stringify(body);
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

async function loadVoices() {
  const health = await (await fetch("/health")).json();
  $("key-row").hidden = !health.auth_required;
  const response = await fetch("/v1/voices", { headers: headers() });
  if (!response.ok) {
    status("cannot list voices: " + (await errorText(response)), true);
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

// weight in [0, 255] -> dark blue .. yellow
function colour(v) {
  const t = v / 255;
  return [Math.round(255 * t * t), Math.round(60 + 180 * t), Math.round(120 * (1 - t) + 40)];
}

function drawAlignment(pieces) {
  const steps = pieces.reduce((sum, p) => sum + p.alignment.steps, 0);
  const chars = Math.max(...pieces.map((p) => p.alignment.chars));
  const image = new ImageData(Math.max(steps, 1), Math.max(chars, 1));
  let x0 = 0;
  for (const piece of pieces) {
    const { steps: s, chars: n, data } = piece.alignment;
    const weights = bytesOf(data); // row-major (step, char)
    for (let step = 0; step < s; step++) {
      for (let c = 0; c < n; c++) {
        const [r, g, b] = colour(weights[step * n + c]);
        const at = ((chars - 1 - c) * image.width + x0 + step) * 4; // characters bottom-up
        image.data.set([r, g, b, 255], at);
      }
    }
    x0 += s;
  }
  const canvas = $("alignment");
  const scratch = document.createElement("canvas");
  scratch.width = image.width;
  scratch.height = image.height;
  scratch.getContext("2d").putImageData(image, 0, 0);
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.drawImage(scratch, 0, 0, canvas.width, canvas.height);
}

function listPieces(pieces) {
  const body = $("pieces").querySelector("tbody");
  body.replaceChildren();
  for (const p of pieces) {
    const row = document.createElement("tr");
    for (const value of [p.index + 1, p.text, p.seconds.toFixed(2), p.stop_reason,
                         p.reached_end ? "yes" : "no"]) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.appendChild(cell);
    }
    body.appendChild(row);
  }
}

async function speak() {
  const button = $("speak");
  button.disabled = true;
  status("synthesizing…", false);
  try {
    const response = await fetch("/v1/synthesize", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({
        voice: $("voice").value, text: $("text").value, format: "wav", alignment: true,
      }),
    });
    if (!response.ok) {
      status(await errorText(response), true);
      return;
    }
    const result = await response.json();
    const audio = $("audio");
    if (audio.src) URL.revokeObjectURL(audio.src);
    audio.src = URL.createObjectURL(new Blob([bytesOf(result.audio)], { type: "audio/wav" }));
    drawAlignment(result.pieces);
    listPieces(result.pieces);
    const t = result.timing;
    status(`${result.seconds.toFixed(2)} s of audio in ${t.total_seconds.toFixed(2)} s ` +
           `(real-time factor ${t.rtf.toFixed(2)})` +
           (result.complete ? "" : "; incomplete: some piece did not reach its end"), false);
    audio.play().catch(() => {}); // autoplay may be refused; the controls are there
  } catch (error) {
    status("request failed: " + error, true);
  } finally {
    button.disabled = false;
  }
}

$("speak").addEventListener("click", speak);
$("key").addEventListener("change", loadVoices);
loadVoices().catch((error) => status("cannot reach the server: " + error, true));
