// AudioWorklet processors for the playground: the microphone in, the agent's voice out.
//
// The AudioContext runs at the device's native rate (44.1 or 48 kHz, usually): Firefox
// refuses to connect a microphone to a context at another rate, so the context cannot
// simply be made at 16 kHz. These processors resample between that rate and the 16 kHz
// PCM16 the server speaks.
//
//   "pcm16-capture":  input audio -> 16 kHz Int16 frames of 20 ms (320 samples), each
//                     posted to the main thread as an ArrayBuffer.
//   "pcm16-playback": 16 kHz Int16 ArrayBuffers posted in -> a ring of samples at the
//                     context's rate, played as the context pulls them. Also takes
//                     {mark: name} (posts {played: name} back once the audio before it
//                     has played) and {clear: true} (drops what has not played yet).

const SERVER_RATE = 16000;
const FRAME_SAMPLES = 320; // 20 ms at 16 kHz

// A streaming windowed-sinc resampler (mono, Float32). Each output sample is the input
// interpolated at its instant through a low-pass kernel (a Blackman-windowed sinc) whose
// cutoff sits below the lower of the two Nyquist frequencies, so downsampling does not
// alias. The kernel is tabulated; taps between table points are interpolated linearly.
class Resampler {
  constructor(inRate, outRate, zeroCrossings = 16) {
    this.step = inRate / outRate; // input samples per output sample
    const cutoff = Math.min(1, outRate / inRate) * 0.92; // fraction of the input's Nyquist
    this.halfWidth = zeroCrossings / cutoff; // kernel half-width, in input samples
    this.resolution = 64; // table points per input sample
    const points = Math.ceil(this.halfWidth * this.resolution) + 2;
    this.table = new Float32Array(points);
    for (let i = 0; i < points; i++) {
      const x = i / this.resolution;
      if (x >= this.halfWidth) break;
      const t = cutoff * x;
      const sinc = t === 0 ? 1 : Math.sin(Math.PI * t) / (Math.PI * t);
      const u = x / this.halfWidth;
      const blackman = 0.42 + 0.5 * Math.cos(Math.PI * u) + 0.08 * Math.cos(2 * Math.PI * u);
      this.table[i] = cutoff * sinc * blackman;
    }
    this.reset();
  }

  reset() {
    // The history starts with a kernel's half-width of silence, so that the first output
    // sample is centred on the first input sample.
    const margin = Math.ceil(this.halfWidth) + 1;
    this.history = new Float32Array(Math.max(4096, margin * 4));
    this.length = margin; // samples held in history
    this.position = margin; // where the next output sample falls, in history's samples
  }

  process(input) {
    this.append(input);
    const out = new Float32Array(Math.ceil(input.length / this.step) + 2);
    const { history, table, halfWidth, resolution } = this;
    let count = 0;
    let position = this.position;
    while (position + halfWidth < this.length - 1) {
      const first = Math.ceil(position - halfWidth);
      const last = Math.floor(position + halfWidth);
      let sum = 0;
      for (let n = first; n <= last; n++) {
        const x = Math.abs(position - n) * resolution;
        const i = x | 0;
        sum += history[n] * (table[i] + (table[i + 1] - table[i]) * (x - i));
      }
      out[count++] = sum;
      position += this.step;
    }
    // Forget the input no later output sample needs.
    const drop = Math.max(0, Math.floor(position - halfWidth) - 1);
    history.copyWithin(0, drop, this.length);
    this.length -= drop;
    this.position = position - drop;
    return out.subarray(0, count);
  }

  append(input) {
    if (this.length + input.length > this.history.length) {
      const grown = new Float32Array((this.length + input.length) * 2);
      grown.set(this.history.subarray(0, this.length));
      this.history = grown;
    }
    this.history.set(input, this.length);
    this.length += input.length;
  }
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, SERVER_RATE);
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels.length === 0) return true; // nothing connected (yet)
    let mono = channels[0];
    if (channels.length > 1) {
      mono = new Float32Array(mono.length);
      for (const channel of channels) {
        for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / channels.length;
      }
    }
    for (const sample of this.resampler.process(mono)) {
      const clipped = Math.max(-1, Math.min(1, sample));
      this.frame[this.filled++] = Math.round(clipped * 32767);
      if (this.filled === FRAME_SAMPLES) {
        this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
        this.frame = new Int16Array(FRAME_SAMPLES);
        this.filled = 0;
      }
    }
    return true;
  }
}

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(SERVER_RATE, sampleRate);
    this.ring = new Float32Array(sampleRate * 30); // 30 s: far more than the server sends ahead
    // Samples written and played since the start; ring index = counter % ring.length.
    this.written = 0;
    this.played = 0;
    this.marks = []; // [name, value of `written` when the mark arrived], oldest first
    this.port.onmessage = (event) => this.receive(event.data);
  }

  receive(message) {
    if (message instanceof ArrayBuffer) {
      const pcm = new Int16Array(message);
      const floats = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) floats[i] = pcm[i] / 32768;
      this.write(this.resampler.process(floats));
    } else if (message.mark !== undefined) {
      this.marks.push([message.mark, this.written]);
    } else if (message.clear) {
      // The user interrupted: drop what has not played. Pending marks are reported at
      // once (as Twilio does), so the server never waits for audio that will not play.
      this.played = this.written;
      this.resampler.reset();
      this.reportMarks();
    }
  }

  write(samples) {
    const ring = this.ring;
    for (let i = 0; i < samples.length; i++) ring[(this.written + i) % ring.length] = samples[i];
    this.written += samples.length;
    if (this.written - this.played > ring.length) this.played = this.written - ring.length;
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    const count = Math.min(out.length, this.written - this.played);
    for (let i = 0; i < count; i++) out[i] = this.ring[(this.played + i) % this.ring.length];
    this.played += count; // the rest of `out` stays silent: nothing to play
    this.reportMarks();
    return true;
  }

  reportMarks() {
    while (this.marks.length > 0 && this.marks[0][1] <= this.played) {
      this.port.postMessage({ played: this.marks.shift()[0] });
    }
  }
}

registerProcessor("pcm16-capture", CaptureProcessor);
registerProcessor("pcm16-playback", PlaybackProcessor);
