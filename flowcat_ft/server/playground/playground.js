// The flowcat-ft playground: talk to the agent from a browser.
//
// WebSocket mode: the microphone goes through an AudioWorklet ("pcm16-capture") that
// resamples it to 16 kHz PCM16 in 20 ms frames, sent as binary messages to /playground;
// the agent's audio comes back the same way and plays through "pcm16-playback". Text
// messages are JSON events (flowcat_ft/serializers/browser.py): transcripts, the bot's
// words, speaking events, each turn's latency, and "mark"/"clear" for playback.
//
// WebRTC mode: the microphone track goes in an RTCPeerConnection, offered to
// /webrtc/offer; the agent's audio comes back as a remote track, and the same JSON events
// arrive on the "events" data channel.
//
// Standard APIs only, no build step. `window.playground` is a small hook for tests.

const SERVER_RATE = 16000;

// What the page shows, and what the test hook reads.
const view = {
  state: "idle", // idle | connecting | connected | closed | error
  detail: "",
  mode: null, // "ws" | "webrtc" while a session runs
  lines: [], // {role: "user" | "bot", text, final, interrupted}
  latencies: [], // ms, one per answered turn
  received: [], // the agent's audio as heard (the last two minutes): Int16Array chunks, 16 kHz
  receivedSamples: 0,
  botTurns: [], // where each time the bot started speaking falls in `received`, in samples
};

let session = null; // the running session's resources, see start()

const $ = (id) => document.getElementById(id);

// -- starting and stopping ------------------------------------------------------------

async function start(mode = "ws") {
  if (session !== null) return;
  if (!navigator.mediaDevices?.getUserMedia) {
    setState("error", "the microphone needs a secure page: use https, or http://localhost");
    return;
  }
  view.mode = mode;
  view.lines = [];
  view.latencies = [];
  view.received = [];
  view.receivedSamples = 0;
  view.botTurns = [];
  render();
  setState("connecting", mode === "ws" ? "WebSocket" : "WebRTC");
  const current = (session = { mode, closers: [] });
  try {
    // The device's own rate: see audio-worklet.js for why not 16 kHz.
    const context = new AudioContext();
    current.closers.push(() => context.close().catch(() => {}));
    await context.audioWorklet.addModule("/playground/audio-worklet.js");
    const microphone = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
    });
    const release = () => microphone.getTracks().forEach((track) => track.stop());
    if (session !== current) return release(); // stopped while waiting for permission
    current.closers.push(release);
    if (mode === "webrtc") {
      await startWebRTC(current, context, microphone);
    } else {
      startWebSocket(current, context, microphone);
    }
    await context.resume(); // a context made before any click starts suspended
  } catch (error) {
    console.error(error);
    if (session === current) stop("error", error.message || String(error));
  }
}

function stop(state = "idle", detail = "") {
  const current = session;
  if (current === null) return;
  session = null;
  view.mode = null;
  for (const close of current.closers.reverse()) {
    try {
      close();
    } catch (error) {
      console.warn("while stopping:", error);
    }
  }
  setState(state, detail);
}

// -- WebSocket ---------------------------------------------------------------------------

function startWebSocket(current, context, microphone) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/playground`);
  socket.binaryType = "arraybuffer";
  current.closers.push(() => socket.close(1000, "stopped"));

  const playback = new AudioWorkletNode(context, "pcm16-playback", {
    numberOfInputs: 0,
    outputChannelCount: [1],
  });
  playback.connect(context.destination);
  playback.port.onmessage = ({ data }) => {
    if (data.played !== undefined && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ event: "mark", name: data.played }));
    }
  };

  // The capture node outputs silence; it is connected so that the graph pulls it.
  const capture = new AudioWorkletNode(context, "pcm16-capture");
  context.createMediaStreamSource(microphone).connect(capture).connect(context.destination);
  capture.port.onmessage = ({ data }) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(data);
  };

  socket.onopen = () => {
    const callId = `playground-${Math.random().toString(36).slice(2, 10)}`;
    socket.send(JSON.stringify({ event: "start", call_id: callId, parameters: { mode: "ws" } }));
    setState("connected", "WebSocket");
  };
  socket.onmessage = ({ data }) => {
    if (typeof data !== "string") {
      heard(new Int16Array(data.slice(0)));
      playback.port.postMessage(data, [data]);
      return;
    }
    const message = JSON.parse(data);
    if (message.event === "mark") playback.port.postMessage({ mark: message.name });
    if (message.event === "clear") playback.port.postMessage({ clear: true });
    onEvent(message);
  };
  socket.onclose = ({ code, reason }) => {
    if (session === current) stop("closed", `closed by the server (${code}${reason ? `: ${reason}` : ""})`);
  };
  socket.onerror = () => {
    if (session === current) stop("error", "the WebSocket connection failed");
  };
}

// -- WebRTC ------------------------------------------------------------------------------

async function startWebRTC(current, context, microphone) {
  const peer = new RTCPeerConnection();
  current.closers.push(() => peer.close());
  for (const track of microphone.getTracks()) peer.addTrack(track, microphone);
  const events = peer.createDataChannel("events");
  events.onmessage = ({ data }) => onEvent(JSON.parse(data));

  peer.ontrack = ({ track, streams }) => {
    const stream = streams[0] ?? new MediaStream([track]);
    // Chromium delivers a remote stream to Web Audio only while a media element plays it:
    // a muted one is enough. The audio is heard through the context, and recorded at
    // 16 kHz by a capture node, like the WebSocket's.
    const element = new Audio();
    element.muted = true;
    element.srcObject = stream;
    element.play().catch(() => {});
    current.closers.push(() => (element.srcObject = null));
    const source = context.createMediaStreamSource(stream);
    source.connect(context.destination);
    const recorder = new AudioWorkletNode(context, "pcm16-capture");
    source.connect(recorder).connect(context.destination);
    recorder.port.onmessage = ({ data }) => heard(new Int16Array(data));
  };
  peer.onconnectionstatechange = () => {
    if (session !== current) return;
    const state = peer.connectionState;
    if (state === "connected") setState("connected", "WebRTC");
    if (state === "failed" || state === "closed") stop("closed", `WebRTC connection ${state}`);
  };

  // Gather every candidate before offering: the server takes one offer and one answer.
  await peer.setLocalDescription(await peer.createOffer());
  await iceGathered(peer, 3000);
  const response = await fetch("/webrtc/offer", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: peer.localDescription.sdp, type: peer.localDescription.type }),
  });
  if (response.status === 503 || response.status === 404) {
    if (session === current) stop("error", "WebRTC is unavailable on this server");
    return;
  }
  if (!response.ok) throw new Error(`/webrtc/offer answered ${response.status}`);
  await peer.setRemoteDescription(await response.json());
}

function iceGathered(peer, timeoutMs) {
  return new Promise((resolve) => {
    if (peer.iceGatheringState === "complete") return resolve();
    const done = () => {
      if (peer.iceGatheringState !== "complete") return;
      peer.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    peer.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs); // offer what has been gathered by then
  });
}

// -- what the page shows ------------------------------------------------------------------

// The last two minutes of what was heard are kept (for the test hook), so a long talk
// does not grow the page without end.
const KEEP_SAMPLES = 120 * SERVER_RATE;

function heard(samples) {
  view.received.push(samples);
  view.receivedSamples += samples.length;
  while (view.receivedSamples - view.received[0].length >= KEEP_SAMPLES) {
    const dropped = view.received.shift().length;
    view.receivedSamples -= dropped;
    view.botTurns = view.botTurns.map((at) => at - dropped).filter((at) => at >= 0);
  }
}

function onEvent(message) {
  switch (message.event) {
    case "transcript":
      userSaid(message.text, message.final);
      break;
    case "bot_text":
      botSaid(message.text);
      break;
    case "latency":
      view.latencies.push(message.ms);
      break;
    case "clear": {
      const last = view.lines.at(-1);
      if (last?.role === "bot" && !last.final) last.interrupted = true;
      closeBotLine();
      break;
    }
    case "bot_stopped_speaking":
      closeBotLine();
      break;
    case "bot_started_speaking":
      view.botTurns.push(view.receivedSamples);
      break;
    case "user_started_speaking":
    case "user_stopped_speaking":
      break;
    default:
      return; // marks, and events this page does not know
  }
  speaking(message.event);
  render();
}

function userSaid(text, final) {
  closeBotLine();
  const last = view.lines.at(-1);
  if (last?.role === "user" && !last.final) {
    last.text = text; // an interim transcript, replaced by the next one
    last.final = final;
  } else {
    view.lines.push({ role: "user", text, final, interrupted: false });
  }
}

// The bot's words arrive as they are spoken (a sentence, or a word, at a time): they go
// on one line until the bot stops speaking.
function botSaid(text) {
  const last = view.lines.at(-1);
  if (last?.role === "bot" && !last.final) {
    last.text = `${last.text} ${text}`.trim();
  } else {
    view.lines.push({ role: "bot", text, final: false, interrupted: false });
  }
}

function closeBotLine() {
  const last = view.lines.at(-1);
  if (last?.role === "bot") last.final = true;
}

function speaking(event) {
  const [who, what] = event.split("_");
  if (what === "started") $(`${who}-speaking`)?.classList.add("on");
  if (what === "stopped") $(`${who}-speaking`)?.classList.remove("on");
  if (event === "clear") $("bot-speaking").classList.remove("on");
}

function setState(state, detail = "") {
  view.state = state;
  view.detail = detail;
  const badge = $("state");
  badge.className = `state ${state}`;
  badge.textContent = detail ? `${state} · ${detail}` : state;
  const running = state === "connecting" || state === "connected";
  $("talk").textContent = running ? "Stop" : "Talk";
  $("webrtc").disabled = running;
  if (!running) document.querySelectorAll(".speaking").forEach((dot) => dot.classList.remove("on"));
}

function render() {
  const transcript = $("transcript");
  transcript.replaceChildren(
    ...view.lines.map((line) => {
      const item = document.createElement("li");
      item.className = `line ${line.role}${line.final ? "" : " interim"}${line.interrupted ? " cut" : ""}`;
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = line.role === "user" ? "you" : "agent";
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = line.text;
      item.append(who, text);
      return item;
    }),
  );
  transcript.scrollTop = transcript.scrollHeight;

  // One row per turn: the number, and a bar scaled to the slowest turn (at least 1 s).
  const scale = Math.max(1000, ...view.latencies);
  $("latencies").replaceChildren(
    ...view.latencies.map((ms, i) => {
      const item = document.createElement("li");
      const label = document.createElement("span");
      label.className = "ms";
      label.textContent = `turn ${i + 1}: ${Math.round(ms)} ms`;
      const track = document.createElement("span");
      track.className = "track";
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${(100 * ms) / scale}%`;
      track.append(bar);
      item.append(label, track);
      return item;
    }),
  );
  const sorted = [...view.latencies].sort((a, b) => a - b);
  $("latency-summary").textContent = sorted.length
    ? `median ${Math.round(sorted[(sorted.length - 1) >> 1])} ms over ${sorted.length} turn(s)`
    : "no turns yet";
}

// -- the test hook ---------------------------------------------------------------------------

// The agent's audio as heard (the last two minutes), 16 kHz 16-bit little-endian PCM, base64.
function receivedAudio() {
  const bytes = new Uint8Array(view.receivedSamples * 2);
  let offset = 0;
  for (const chunk of view.received) {
    bytes.set(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength), offset);
    offset += chunk.byteLength;
  }
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

window.playground = {
  start,
  stop: () => stop(),
  receivedAudio,
  sampleRate: SERVER_RATE,
  get state() {
    return view.state;
  },
  get detail() {
    return view.detail;
  },
  get mode() {
    return view.mode;
  },
  get lines() {
    return view.lines.map((line) => ({ ...line }));
  },
  get latencies() {
    return [...view.latencies];
  },
  get receivedSamples() {
    return view.receivedSamples;
  },
  get botTurns() {
    return [...view.botTurns];
  },
};

// -- wiring ----------------------------------------------------------------------------------

$("talk").addEventListener("click", () => {
  if (session !== null) stop();
  else start($("webrtc").checked ? "webrtc" : "ws");
});

render();
const autostart = new URLSearchParams(location.search).get("autostart");
if (autostart === "ws" || autostart === "webrtc") {
  $("webrtc").checked = autostart === "webrtc";
  start(autostart);
}
