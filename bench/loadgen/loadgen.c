/*
 * loadgen: the echo benchmark's native WebSocket load generator (see bench/echo/README.md).
 *
 * N calls on ws://127.0.0.1:PORT/PATH, each sending a 160-byte µ-law frame every 20 ms
 * (50 fps) on an absolute CLOCK_MONOTONIC schedule, either as binary messages (raw mode) or
 * as Twilio Media Streams JSON (twilio mode: "connected" and "start" first, then "media"
 * with a base64 payload). The first 8 bytes of every payload carry the frame's send time,
 * 7 bits per byte with the top bit set, so they survive a µ-law -> PCM -> µ-law round trip
 * (only 0x7F does not); the next byte says whether the frame was due in the measured window.
 * Each echo that comes back gives one round trip.
 *
 * One thread: epoll, a timerfd armed at the next due send, non-blocking sockets, and no
 * library beyond libc. Calls' send times are spread evenly over the 20 ms period.
 *
 * Phases: connections open evenly over --ramp s; frames flow for --warmup s; the next
 * --seconds s are the measured window (frames sent in it are expected back); then sending
 * stops and echoes are awaited for up to --grace s; then every connection is closed
 * (close frame, then up to 1 s for the server's).  --idle instead sends one frame per call
 * (so each call starts) and holds the connections open for --seconds once all are open.
 *
 * --churn S (the soak benchmark's mode) instead gives every call a length of its own,
 * drawn from a log-normal distribution with median S (between S/10 and 10 S: most calls
 * short, a few long, as calls are): when its time is up the call stops sending, closes the
 * connection cleanly 0.3 s later (close code 1000, once the last echoes are back), and
 * its slot dials a new call 0.1 to 1 s after, so about N calls are up all along while
 * calls start and end throughout. Every frame sent in the window counts; a frame whose
 * call the server closed before it came back is lost. --report S prints, every S s of the
 * window, one JSON line on stdout for that interval ("interval": true, its round-trip
 * percentiles, frames, calls opened and ended).
 *
 * Output: one JSON object on stdout at the end (after any interval lines). Progress on
 * stderr, one line each: "open N" once every connection is open or has failed (the first
 * time each slot dials, with --churn), "measure" when the window opens, "measured" when it
 * closes.
 *
 * Conversation mode (--clip, bench/agent/README.md): each call is a phone caller talking
 * to an agent over Twilio Media Streams. Between utterances it sends line noise (--noise)
 * or µ-law silence, 20 ms at a time as a phone does. It waits for the agent's greeting (up
 * to --greeting-timeout s), then says the --clip files in turn, one every --period s, and
 * once the window has closed says --goodbye (with --barge-in S: S s into the reply to the
 * last question, over it). Each utterance records when it was said, and the agent's reply
 * to it: the arrival of its first audible frame, its audible length, how far its frames
 * fell behind a real-time playout clock started at that first frame (and the longest gap
 * between two of them), and the first `clear` after the utterance began. Each call
 * records whether and when the server closed it (or sent a Twilio `stop`). The run ends
 * once every call has ended or --grace s after the window. Times are ms from the start.
 *
 * RTP mode (--rtp): each call is a SIP call over UDP to 127.0.0.1:PORT instead of a
 * WebSocket: the generator sends the INVITE itself (an SDP offer of PCMU at 20 ms on the
 * call's own RTP socket), sends it again after 0.5, 1, 2 and 4 s until a final response
 * (a provisional one stops that), gives up after 8 s, and ACKs the 200 OK (each time it
 * comes). Its frames then go to the address of the answer's SDP as RTP (payload type 0,
 * sequence numbers and timestamps counting up, marker on the first), stamped like the
 * WebSocket modes' payloads; every PCMU packet that comes back on the call's socket is an
 * echo. The end is a BYE (sent again every 0.5 s until its 200 OK, 2 s at most). A BYE
 * from the server is answered 200 and counts as a call closed early (close code 0);
 * an INVITE refused counts its status as the close code. The report adds "setup_ms":
 * INVITE sent to 200 OK received, percentiles over the calls answered.
 *
 * Build: cc -O2 -o loadgen loadgen.c (bench/echo/loadgen.py does it).
 */

#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define FRAME_BYTES 160       /* 20 ms of µ-law at 8 kHz */
#define STAMP_BYTES 8         /* send time, 7 bits per byte, top bit set */
#define IN_WINDOW 0x81        /* the byte after the stamp: 0x81 if due in the window, else 0x80 */
#define READ_BUF (16 * 1024)  /* per connection; a message never comes near it */
#define MAX_PENDING (256 * 1024) /* unsent bytes per connection before frames are dropped */
#define MIN_GAP_NS 500000LL   /* at most one timer wake-up per 0.5 ms */
#define TIMER_ID UINT32_MAX
#define SIP_ID (UINT32_MAX - 1)
#define SIP_T1_NS 500000000LL          /* --rtp: first retransmission interval */
#define SIP_GIVE_UP_NS 8000000000LL    /* --rtp: an INVITE unanswered this long failed */
#define SIP_BUF 4096
#define MAX_CODES 16
#define MAX_CLIPS 16
#define AUDIBLE 500           /* a frame is audible if a sample reaches this (16-bit PCM) */
#define GREETING_QUIET_NS 1000000000LL /* the greeting is over after 1 s with nothing audible */
#define OVERLAP_NS 100000000LL /* a reply still arriving this close to an utterance's end */

enum state { IDLE, CONNECTING, HANDSHAKE, OPEN, CLOSING, DONE };

#define DRAIN_NS 300000000LL    /* --churn: a call stops sending this long before it closes */
#define CLOSE_WAIT_NS 2000000000LL /* --churn: how long a close waits for the server's */

struct conn {
    int fd;
    enum state state;
    int opened;          /* the handshake completed at some point */
    uint32_t mask_seed;  /* xorshift state for the client's masking keys */
    uint64_t frames_sent;
    char *rbuf;
    size_t rlen;
    char *wbuf;          /* bytes the socket did not take yet, sent when it is writable */
    size_t wlen, woff;
    int dialled;         /* --churn: the slot has dialled before (its first call resolved) */
    int64_t ends_at;     /* --churn: when the call stops sending (then closes) */
    int64_t closing_at;  /* --churn: when the close was sent */
    int64_t redial_at;   /* --churn: when the slot dials its next call */
    /* conversation mode */
    int owner;           /* the utterance whose reply incoming audio belongs to (-1: none) */
    int speaking;        /* the utterance being said (-1: none) */
    int last_said;       /* the last utterance said (-1: none) */
    size_t clip_pos;     /* bytes of the speaking utterance's clip sent */
    int next_kind;       /* what is said next (enum kind); DONE_TALKING after goodbye */
    int questions;       /* questions said */
    int64_t next_say;    /* when it is said (INT64_MAX: not scheduled yet) */
    int64_t last_audible;/* arrival of the last audible frame from the agent (0: none) */
    size_t noise_pos;
    int64_t ended;       /* when the server closed the call or sent a stop (0: it did not) */
    int end_code;        /* its close code (0: a Twilio stop) */
    /* --rtp */
    uint16_t rtp_seq;
    int64_t invited_at;  /* when the INVITE was first sent */
    int64_t retry_at;    /* when the INVITE (or BYE) goes again (INT64_MAX: not) */
    int64_t retry_gap;   /* the interval before that, doubled each time */
    char to_tag[64];     /* the server's tag, from its final response */
};

enum kind { GREETING, QUESTION, GOODBYE, DONE_TALKING };
static const char *KIND_NAMES[] = {"greeting", "question", "goodbye"};

/* One utterance said by a caller (or the greeting, where nothing is said) and the agent's
 * reply to it. Times are CLOCK_MONOTONIC ns, 0 where it did not happen. */
struct utterance {
    int call, kind, clip, over; /* over: said over the agent's reply (a barge-in) */
    int64_t start, end;         /* its first and last frame sent (the greeting: the start) */
    int64_t reply, last_frame;  /* the reply's first audible frame, its latest frame */
    uint32_t frames, audible;   /* frames since the first audible one; up to the last audible */
    int64_t max_lag, max_gap;   /* behind the playout clock; between two frames */
    int overlapped;             /* an earlier reply was still arriving as it ended */
    int64_t clear;              /* the first clear after it began */
};

struct options {
    int port;
    const char *path;
    int twilio;
    int calls;
    double ramp, warmup, seconds, grace;
    int fps;
    int idle;
    double churn, report;
    const char *clips[MAX_CLIPS];
    int nclips;
    const char *goodbye, *noise;
    double period, greeting_timeout, barge_in;
    int rtp;
};

static struct options opt = {
    .port = 0, .path = "/raw?codec=mulaw&sample_rate=8000", .twilio = 0, .calls = 10,
    .ramp = 1.0, .warmup = 1.0, .seconds = 10.0, .grace = 2.0, .fps = 50, .idle = 0,
    .churn = 0, .report = 0,
    .period = 8.0, .greeting_timeout = 10.0, .barge_in = -1,
};

/* µ-law audio read from a file */
struct clip {
    uint8_t *bytes;
    size_t n;
};

static struct clip clips[MAX_CLIPS], goodbye_clip, noise_clip;
static int talking; /* conversation mode */
static struct utterance *utts;
static size_t utt_count, utt_cap;
static int16_t ULAW[256];

/* -- counters and round trips -------------------------------------------------------- */

static struct conn *conns;
static int epfd, timerfd;
static int64_t t0, m0 = INT64_MAX, m1 = INT64_MAX; /* start, measured window [m0, m1) */
static int64_t period_ns; /* between two frames of a call */
static uint64_t expected, sent, received, corrupt, dropped, other_messages;
static uint64_t *rtts;
static size_t rtt_count, rtt_cap;
/* The current --report interval: its round trips and counts, and the calls' counts. */
static uint64_t *irtts;
static size_t irtt_count, irtt_cap;
static uint64_t isent, ireceived;
static uint64_t calls_opened, calls_ended, calls_failed, icalls_opened, icalls_ended;
static uint64_t icalls_closed;
static int opened_count, resolved_count, closed_early;
static int collecting = 1; /* round trips are recorded until the grace period ends */
static int codes[MAX_CODES], code_counts[MAX_CODES], code_kinds;
static uint64_t *setups; /* --rtp: INVITE to 200 OK of each call answered */
static size_t setup_count, setup_cap;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void progress(const char *line) {
    fprintf(stderr, "%s\n", line);
    fflush(stderr);
}

static void count_close(int code) {
    for (int i = 0; i < code_kinds; i++)
        if (codes[i] == code) { code_counts[i]++; return; }
    if (code_kinds < MAX_CODES) { codes[code_kinds] = code; code_counts[code_kinds++] = 1; }
}

static void push_rtt(uint64_t **v, size_t *count, size_t *cap, uint64_t ns) {
    if (*count == *cap) {
        *cap = *cap ? *cap * 2 : 65536;
        *v = realloc(*v, *cap * sizeof **v);
        if (!*v) { perror("loadgen: realloc"); exit(1); }
    }
    (*v)[(*count)++] = ns;
}

static void record_rtt(uint64_t ns) {
    push_rtt(&rtts, &rtt_count, &rtt_cap, ns);
    if (opt.report > 0) push_rtt(&irtts, &irtt_count, &irtt_cap, ns);
}

/* A draw from the log-normal distribution of call lengths (seconds), by Box-Muller. */
static uint64_t rng = 88172645463325252ULL;
static double uniform(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return ((rng >> 11) + 0.5) / 9007199254740992.0;
}

static double call_length(void) {
    double z = sqrt(-2.0 * log(uniform())) * cos(2.0 * M_PI * uniform());
    double s = opt.churn * exp(z);
    if (s < opt.churn / 10) s = opt.churn / 10;
    if (s > opt.churn * 10) s = opt.churn * 10;
    return s;
}

/* -- conversations: clips, utterances ------------------------------------------------------ */

static struct clip read_clip(const char *path) {
    struct clip c = {0};
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (n <= 0 || !(c.bytes = malloc((size_t)n)) || fread(c.bytes, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "loadgen: cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    c.n = (size_t)n;
    return c;
}

static void ulaw_table(void) {
    for (int b = 0; b < 256; b++) {
        int u = ~b & 0xFF, t = ((u & 0x0F) << 3) + 0x84;
        t <<= (u & 0x70) >> 4;
        ULAW[b] = (int16_t)((u & 0x80) ? 0x84 - t : t - 0x84);
    }
}

static int audible(const uint8_t *ulaw, size_t n) {
    for (size_t k = 0; k < n; k++)
        if (ULAW[ulaw[k]] >= AUDIBLE || ULAW[ulaw[k]] <= -AUDIBLE) return 1;
    return 0;
}

/* A new utterance of call i; its index. */
static int new_utterance(int i, int kind, int clip, int64_t start) {
    if (utt_count == utt_cap) {
        utt_cap = utt_cap ? utt_cap * 2 : 1024;
        utts = realloc(utts, utt_cap * sizeof *utts);
        if (!utts) { perror("loadgen: realloc"); exit(1); }
    }
    struct utterance *u = &utts[utt_count];
    memset(u, 0, sizeof *u);
    u->call = i;
    u->kind = kind;
    u->clip = clip;
    u->start = u->end = start;
    return (int)utt_count++;
}

static const struct clip *clip_of(const struct utterance *u) {
    return u->kind == GOODBYE ? &goodbye_clip : &clips[u->clip];
}

/* -- base64 ----------------------------------------------------------------------------- */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static size_t b64_encode(const uint8_t *in, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = B64[(v >> 18) & 63];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = i + 1 < n ? B64[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? B64[v & 63] : '=';
    }
    return o;
}

static int b64_value(char c) {
    const char *p = c ? strchr(B64, c) : NULL;
    return p ? (int)(p - B64) : -1;
}

/* Decode the first `groups` 4-character groups of `in` (no padding expected there). */
static int b64_decode_prefix(const char *in, size_t avail, int groups, uint8_t *out) {
    if (avail < (size_t)groups * 4) return -1;
    for (int g = 0; g < groups; g++) {
        uint32_t v = 0;
        for (int k = 0; k < 4; k++) {
            int d = b64_value(in[g * 4 + k]);
            if (d < 0) return -1;
            v = v << 6 | (uint32_t)d;
        }
        out[g * 3] = v >> 16;
        out[g * 3 + 1] = v >> 8;
        out[g * 3 + 2] = v;
    }
    return 0;
}

/* -- the time stamp in the payload --------------------------------------------------------- */

static void stamp(uint8_t *payload, uint64_t t) {
    for (int i = 0; i < STAMP_BYTES; i++) payload[i] = 0x80 | ((t >> (7 * i)) & 0x7F);
}

static int unstamp(const uint8_t *payload, uint64_t *t) {
    uint64_t v = 0;
    for (int i = 0; i < STAMP_BYTES; i++) {
        if (!(payload[i] & 0x80)) return -1;
        v |= (uint64_t)(payload[i] & 0x7F) << (7 * i);
    }
    *t = v;
    return 0;
}

/* -- sending ------------------------------------------------------------------------------ */

static void close_conn(int i, int early);

static void want_write(int i, int on) {
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.u32 = (uint32_t)i};
    epoll_ctl(epfd, EPOLL_CTL_MOD, conns[i].fd, &ev);
}

/* Queue bytes on connection i: write now if nothing is pending, keep the rest for later.
 * Returns 0, or -1 if the connection's backlog is full (the server stopped reading). */
static int send_bytes(int i, const char *data, size_t n) {
    struct conn *c = &conns[i];
    if (c->wlen == c->woff) {
        c->wlen = c->woff = 0;
        ssize_t w = write(c->fd, data, n);
        if (w == (ssize_t)n) return 0;
        if (w < 0 && errno != EAGAIN) { close_conn(i, 1); return -1; }
        if (w > 0) { data += w; n -= (size_t)w; }
    }
    if (!c->wbuf && !(c->wbuf = malloc(MAX_PENDING))) { perror("loadgen: malloc"); exit(1); }
    if (c->wlen + n > MAX_PENDING && c->woff) {
        memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
        c->wlen -= c->woff;
        c->woff = 0;
    }
    if (c->wlen + n > MAX_PENDING) return -1;
    memcpy(c->wbuf + c->wlen, data, n);
    c->wlen += n;
    want_write(i, 1);
    return 0;
}

static void flush_pending(int i) {
    struct conn *c = &conns[i];
    while (c->woff < c->wlen) {
        ssize_t w = write(c->fd, c->wbuf + c->woff, c->wlen - c->woff);
        if (w < 0) {
            if (errno != EAGAIN) close_conn(i, 1);
            return;
        }
        c->woff += (size_t)w;
    }
    c->wlen = c->woff = 0;
    want_write(i, 0);
}

/* Send one client (masked) WebSocket frame. */
static int send_ws(int i, int opcode, const void *payload, size_t n) {
    char frame[14 + 512];
    size_t h = 0;
    if (n > 512) return -1;
    frame[h++] = (char)(0x80 | opcode);
    if (n < 126) {
        frame[h++] = (char)(0x80 | n);
    } else {
        frame[h++] = (char)(0x80 | 126);
        frame[h++] = (char)(n >> 8);
        frame[h++] = (char)n;
    }
    uint32_t s = conns[i].mask_seed;
    s ^= s << 13; s ^= s >> 17; s ^= s << 5;
    conns[i].mask_seed = s;
    uint8_t key[4] = {s >> 24, s >> 16, s >> 8, s};
    memcpy(frame + h, key, 4);
    h += 4;
    const uint8_t *p = payload;
    for (size_t k = 0; k < n; k++) frame[h + k] = (char)(p[k] ^ key[k & 3]);
    return send_bytes(i, frame, h + n);
}

static void send_text(int i, const char *text) { send_ws(i, 0x1, text, strlen(text)); }

static void send_twilio_preamble(int i) {
    char msg[512];
    send_text(i, "{\"event\":\"connected\",\"protocol\":\"Call\",\"version\":\"1.0.0\"}");
    snprintf(msg, sizeof msg,
             "{\"event\":\"start\",\"sequenceNumber\":\"1\",\"start\":{\"accountSid\":\"AC0\","
             "\"streamSid\":\"MZ%d\",\"callSid\":\"CA%d\",\"tracks\":[\"inbound\"],"
             "\"customParameters\":{},\"mediaFormat\":{\"encoding\":\"audio/x-mulaw\","
             "\"sampleRate\":8000,\"channels\":1}},\"streamSid\":\"MZ%d\"}",
             i, i, i);
    send_text(i, msg);
}

static void fill_noise(struct conn *c, uint8_t *out, size_t n) {
    for (size_t k = 0; k < n; k++) {
        out[k] = noise_clip.n ? noise_clip.bytes[c->noise_pos++ % noise_clip.n] : 0xFF;
    }
}

static void schedule_after_question(int i, int64_t said_at);

/* What call i says in this frame: the next 20 ms of the utterance it is saying, starting
 * one if it is due, or line noise. */
static void conversation_payload(int i, uint8_t *payload, int64_t t) {
    struct conn *c = &conns[i];
    const struct utterance *heard = c->owner >= 0 ? &utts[c->owner] : NULL;
    if (heard && heard->kind == GREETING && !c->questions && heard->reply &&
        t - c->last_audible >= GREETING_QUIET_NS && t < c->next_say)
        c->next_say = t; /* the greeting is over: the first question now */
    if (heard && c->next_kind == GOODBYE && opt.barge_in >= 0 && c->owner == c->last_said &&
        heard->reply && heard->reply + (int64_t)(opt.barge_in * 1e9) < c->next_say)
        c->next_say = heard->reply + (int64_t)(opt.barge_in * 1e9);
    if (c->speaking < 0 && c->next_kind != DONE_TALKING && t >= c->next_say) {
        int kind = c->next_kind == GOODBYE ? GOODBYE : QUESTION;
        int clip = kind == QUESTION ? c->questions % opt.nclips : -1;
        c->speaking = c->last_said = new_utterance(i, kind, clip, t);
        utts[c->speaking].over = c->owner >= 0 && utts[c->owner].reply &&
                                 t - c->last_audible < OVERLAP_NS;
        c->clip_pos = 0;
        if (kind == QUESTION) {
            c->questions++;
            schedule_after_question(i, t);
        } else {
            c->next_kind = DONE_TALKING;
        }
    }
    if (c->speaking < 0) {
        fill_noise(c, payload, FRAME_BYTES);
        return;
    }
    struct utterance *u = &utts[c->speaking];
    const struct clip *clip = clip_of(u);
    size_t n = clip->n - c->clip_pos < FRAME_BYTES ? clip->n - c->clip_pos : FRAME_BYTES;
    memcpy(payload, clip->bytes + c->clip_pos, n);
    fill_noise(c, payload + n, FRAME_BYTES - n);
    c->clip_pos += n;
    if (c->clip_pos == clip->n) { /* said: the agent's reply is to this from now on */
        u->end = t;
        u->overlapped = c->last_audible && t - c->last_audible < OVERLAP_NS;
        c->owner = c->speaking;
        c->speaking = -1;
    }
}

/* The next utterance after a question said at said_at: another question a period later,
 * or, once the window has closed by then, goodbye (with --barge-in: over the reply). */
static void schedule_after_question(int i, int64_t said_at) {
    struct conn *c = &conns[i];
    int64_t next = said_at + (int64_t)(opt.period * 1e9);
    c->next_kind = next >= m1 ? GOODBYE : QUESTION;
    c->next_say = next;
}

static int send_rtp(int i, uint64_t k, const uint8_t *payload);

/* Send frame number k of connection i, stamped now. */
static int send_frame(int i, uint64_t k, int in_window) {
    uint8_t payload[FRAME_BYTES];
    int64_t t = now_ns();
    if (talking) {
        conversation_payload(i, payload, t);
    } else {
        stamp(payload, (uint64_t)(t - t0));
        payload[STAMP_BYTES] = in_window ? IN_WINDOW : 0x80;
        for (int b = STAMP_BYTES + 1; b < FRAME_BYTES; b++)
            payload[b] = 0x80 | ((b * 5 + k) & 0x7F);
    }
    if (opt.rtp) return send_rtp(i, k, payload);
    if (!opt.twilio) return send_ws(i, 0x2, payload, FRAME_BYTES);
    char b64[4 * (FRAME_BYTES + 2) / 3 + 1];
    b64[b64_encode(payload, FRAME_BYTES, b64)] = 0;
    char msg[512];
    int n = snprintf(msg, sizeof msg,
                     "{\"event\":\"media\",\"sequenceNumber\":\"%llu\",\"media\":{\"track\":"
                     "\"inbound\",\"chunk\":\"%llu\",\"timestamp\":\"%llu\",\"payload\":\"%s\"},"
                     "\"streamSid\":\"MZ%d\"}",
                     (unsigned long long)k + 2, (unsigned long long)k + 1,
                     (unsigned long long)k * 1000 / (uint64_t)opt.fps, b64, i);
    return send_ws(i, 0x1, msg, (size_t)n);
}

/* -- connecting ---------------------------------------------------------------------------- */

static void resolve(int ok) {
    opened_count += ok;
    if (++resolved_count == opt.calls) {
        char line[64];
        snprintf(line, sizeof line, "open %d", opened_count);
        progress(line);
        if (opt.idle) {
            m0 = now_ns();
            m1 = m0 + (int64_t)(opt.seconds * 1e9);
        }
    }
}

static void close_conn(int i, int early) {
    struct conn *c = &conns[i];
    if (c->state == DONE) return;
    if (!c->opened && c->state != IDLE) {
        if (!c->dialled) resolve(0);
        calls_failed++;
    }
    if (early && c->opened) { closed_early++; icalls_closed++; }
    if (c->opened) { calls_ended++; icalls_ended++; }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = DONE;
    c->dialled = 1;
    if (opt.churn > 0) c->redial_at = now_ns() + (int64_t)((0.1 + 0.9 * uniform()) * 1e9);
}

static void rtp_connect(int i);

static void start_connect(int i) {
    if (opt.rtp) { rtp_connect(i); return; }
    struct conn *c = &conns[i];
    c->opened = 0;
    c->frames_sent = 0;
    c->rlen = c->wlen = c->woff = 0;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(opt.port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    c->state = CONNECTING;
    if (c->fd < 0) { c->state = DONE; resolve(0); return; }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS)
        close_conn(i, 0);
}

static void send_handshake(int i) {
    struct conn *c = &conns[i];
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) { close_conn(i, 0); return; }
    uint8_t nonce[16];
    for (int k = 0; k < 16; k++) nonce[k] = (uint8_t)(c->mask_seed >> (k % 4 * 8)) ^ (uint8_t)k;
    char key[25];
    key[b64_encode(nonce, 16, key)] = 0;
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     opt.path, opt.port, key);
    if (write(c->fd, req, (size_t)n) != n) { close_conn(i, 0); return; }
    c->state = HANDSHAKE;
    want_write(i, 0);
}

/* The server's response to the upgrade: 101, or the connection failed. The accept key is
 * not checked: the server is ours, on loopback. */
static void read_handshake(int i) {
    struct conn *c = &conns[i];
    char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
    if (!end) {
        if (c->rlen == READ_BUF) close_conn(i, 0);
        return;
    }
    if (c->rlen < 12 || memcmp(c->rbuf, "HTTP/1.1 101", 12) != 0) { close_conn(i, 0); return; }
    size_t header = (size_t)(end + 4 - c->rbuf);
    memmove(c->rbuf, c->rbuf + header, c->rlen - header);
    c->rlen -= header;
    c->state = OPEN;
    c->opened = 1;
    calls_opened++;
    icalls_opened++;
    if (!c->dialled) resolve(1);
    if (opt.churn > 0) c->ends_at = now_ns() + (int64_t)(call_length() * 1e9);
    if (opt.twilio) send_twilio_preamble(i);
    if (talking) { /* the agent greets the caller: the greeting is a reply to the start */
        c->owner = c->last_said = new_utterance(i, GREETING, -1, now_ns());
        c->next_kind = QUESTION;
        c->next_say = now_ns() + (int64_t)(opt.greeting_timeout * 1e9);
    }
}

/* -- receiving ------------------------------------------------------------------------------ */

/* An echoed audio payload (µ-law bytes) came back at time `t`. */
static void echo_arrived(const uint8_t *payload, size_t n, int64_t t) {
    uint64_t sent_at;
    if (n <= STAMP_BYTES || unstamp(payload, &sent_at) < 0) { corrupt++; return; }
    if (!collecting || payload[STAMP_BYTES] != IN_WINDOW) return; /* only the window's frames */
    received++;
    ireceived++;
    record_rtt((uint64_t)(t - (t0 + (int64_t)sent_at)));
}

/* The server ended call i at t: closed it with `code`, or sent a Twilio stop (code 0). */
static void server_ended(int i, int code, int64_t t) {
    if (!conns[i].ended) {
        conns[i].ended = t;
        conns[i].end_code = code;
    }
}

/* A frame of the agent's audio for call i arrived at t: the reply it belongs to starts
 * with its first audible frame, then is timed against a playout clock started there. */
static void reply_audio(int i, const uint8_t *ulaw, size_t n, int64_t t) {
    struct conn *c = &conns[i];
    int loud = audible(ulaw, n);
    if (loud) c->last_audible = t;
    if (c->owner < 0) return;
    struct utterance *u = &utts[c->owner];
    if (!u->reply) {
        if (!loud) return; /* silence before the reply */
        u->reply = u->last_frame = t;
        u->frames = u->audible = 1;
        return;
    }
    int64_t lag = t - (u->reply + (int64_t)u->frames * period_ns);
    if (lag > u->max_lag) u->max_lag = lag;
    if (t - u->last_frame > u->max_gap) u->max_gap = t - u->last_frame;
    u->last_frame = t;
    u->frames++;
    if (loud) u->audible = u->frames;
}

/* A clear (the agent stopped talking, dropping what it had sent) for call i at t: it
 * answers the utterance being said, or the last one said. Audio taken for the reply to an
 * utterance that ended while an earlier reply was still arriving was that earlier reply's
 * tail: its own reply is what comes after the clear. */
static void clear_arrived(int i, int64_t t) {
    struct conn *c = &conns[i];
    int k = c->speaking >= 0 ? c->speaking : c->last_said;
    if (k >= 0 && !utts[k].clear) utts[k].clear = t;
    if (c->owner >= 0 && utts[c->owner].overlapped) {
        struct utterance *u = &utts[c->owner];
        u->reply = u->last_frame = u->max_lag = u->max_gap = 0;
        u->frames = u->audible = 0;
    }
}

static void conversation_message(int i, const char *text, size_t n, int64_t t) {
    const char *p = memmem(text, n, "\"payload\"", 9);
    if (p) {
        p += 9;
        const char *end = text + n;
        while (p < end && (*p == ' ' || *p == ':')) p++;
        uint8_t ulaw[FRAME_BYTES];
        int groups = (int)((end - p - 1) / 4);
        if (groups > FRAME_BYTES / 3) groups = FRAME_BYTES / 3;
        if (p >= end || *p != '"' || b64_decode_prefix(p + 1, (size_t)(end - p - 1), groups, ulaw) < 0) {
            corrupt++;
            return;
        }
        received++;
        reply_audio(i, ulaw, (size_t)groups * 3, t);
    } else if (memmem(text, n, "\"clear\"", 7)) {
        clear_arrived(i, t);
    } else if (memmem(text, n, "\"stop\"", 6)) {
        server_ended(i, 0, t);
    } else {
        other_messages++;
    }
}

/* Find the base64 payload in a Twilio-style media message and pass its first bytes on. */
static void json_arrived(int i, const char *text, size_t n, int64_t t) {
    if (talking) { conversation_message(i, text, n, t); return; }
    const char *p = memmem(text, n, "\"payload\"", 9);
    if (!p) { other_messages++; return; }
    p += 9;
    const char *end = text + n;
    while (p < end && (*p == ' ' || *p == ':')) p++;
    if (p >= end || *p != '"') { corrupt++; return; }
    p++;
    uint8_t head[9];
    if (b64_decode_prefix(p, (size_t)(end - p), 3, head) < 0) { corrupt++; return; }
    echo_arrived(head, sizeof head, t);
}

/* Parse whole server frames out of the read buffer. */
static void read_frames(int i, int64_t t) {
    struct conn *c = &conns[i];
    size_t off = 0;
    while (c->state != DONE && c->rlen - off >= 2) {
        uint8_t *f = (uint8_t *)c->rbuf + off;
        size_t avail = c->rlen - off, h = 2;
        int opcode = f[0] & 0x0F, fin = f[0] & 0x80, masked = f[1] & 0x80;
        uint64_t n = f[1] & 0x7F;
        if (n == 126) {
            if (avail < 4) break;
            n = (uint64_t)f[2] << 8 | f[3];
            h = 4;
        } else if (n == 127) {
            if (avail < 10) break;
            n = 0;
            for (int k = 0; k < 8; k++) n = n << 8 | f[2 + k];
            h = 10;
        }
        if (masked) h += 4;
        if (h + n > READ_BUF) { close_conn(i, 1); return; }
        if (avail < h + n) break;
        uint8_t *payload = f + h;
        if (masked)
            for (uint64_t k = 0; k < n; k++) payload[k] ^= f[h - 4 + (k & 3)];
        off += h + (size_t)n;
        if (!fin || opcode == 0x0) {
            other_messages++; /* fragments: the servers under test never send them */
        } else if (opcode == 0x2) {
            echo_arrived(payload, (size_t)n, t);
        } else if (opcode == 0x1) {
            json_arrived(i, (const char *)payload, (size_t)n, t);
        } else if (opcode == 0x9) {
            send_ws(i, 0xA, payload, (size_t)n); /* ping -> pong */
        } else if (opcode == 0x8) {
            int code = n >= 2 ? payload[0] << 8 | payload[1] : 1005;
            if (c->state == CLOSING) {
                close_conn(i, 0);
            } else {
                count_close(code);
                server_ended(i, code, t);
                send_ws(i, 0x8, payload, n >= 2 ? 2 : 0);
                close_conn(i, 1);
            }
            return;
        }
    }
    if (c->state == DONE) return;
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
}

static void on_readable(int i) {
    struct conn *c = &conns[i];
    if (!c->rbuf && !(c->rbuf = malloc(READ_BUF))) { perror("loadgen: malloc"); exit(1); }
    ssize_t r = read(c->fd, c->rbuf + c->rlen, READ_BUF - c->rlen);
    int64_t t = now_ns();
    if (r <= 0) {
        if (r < 0 && errno == EAGAIN) return;
        if (c->state == OPEN) count_close(1006), server_ended(i, 1006, t);
        close_conn(i, c->state == OPEN);
        return;
    }
    c->rlen += (size_t)r;
    if (c->state == HANDSHAKE) read_handshake(i);
    if (c->state == OPEN || c->state == CLOSING) read_frames(i, t);
}

static void rtp_readable(int i);

static void on_event(uint32_t i, uint32_t events) {
    struct conn *c = &conns[i];
    if (opt.rtp) { rtp_readable((int)i); return; }
    if (c->state == CONNECTING) {
        send_handshake(i);
        return;
    }
    if (events & EPOLLOUT) flush_pending(i);
    if (c->state != DONE && (events & (EPOLLIN | EPOLLHUP | EPOLLERR))) on_readable(i);
}

/* -- RTP mode: SIP over UDP, RTP on a socket per call ------------------------------------ */

static int sip_fd = -1, sip_port;
static struct sockaddr_in server_addr;
static int pending_sip; /* calls waiting for a final response to their INVITE or BYE */

static void sip_setup(void) {
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons(opt.port);
    server_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sip_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in local = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof local;
    int size = 4 << 20;
    if (sip_fd < 0 || bind(sip_fd, (struct sockaddr *)&local, sizeof local) < 0 ||
        getsockname(sip_fd, (struct sockaddr *)&local, &len) < 0) {
        perror("loadgen: SIP socket");
        exit(1);
    }
    setsockopt(sip_fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    sip_port = ntohs(local.sin_port);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = SIP_ID};
    epoll_ctl(epfd, EPOLL_CTL_ADD, sip_fd, &ev);
}

static void sip_send(const char *msg, int n) {
    sendto(sip_fd, msg, (size_t)n, 0, (struct sockaddr *)&server_addr, sizeof server_addr);
}

/* A request of call i: INVITE (with the SDP offer), ACK or BYE, on the transaction
 * `branch` names: the INVITE's is the same on each retransmission, as is the ACK of a
 * final response that is not a 2xx; the ACK of a 2xx and a BYE are transactions of their
 * own. */
static void sip_request(int i, const char *method, const char *branch) {
    struct conn *c = &conns[i];
    char sdp[512], msg[SIP_BUF], to_tag[80] = "";
    int body = 0, invite = !strcmp(method, "INVITE"), bye = !strcmp(method, "BYE");
    if (invite) {
        struct sockaddr_in local;
        socklen_t len = sizeof local;
        getsockname(c->fd, (struct sockaddr *)&local, &len);
        body = snprintf(sdp, sizeof sdp,
                        "v=0\r\no=- %d 1 IN IP4 127.0.0.1\r\ns=loadgen\r\nc=IN IP4 127.0.0.1\r\n"
                        "t=0 0\r\nm=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n"
                        "a=sendrecv\r\n",
                        i, ntohs(local.sin_port));
    }
    if (c->to_tag[0]) snprintf(to_tag, sizeof to_tag, ";tag=%s", c->to_tag);
    int n = snprintf(msg, sizeof msg,
                     "%s sip:agent@127.0.0.1:%d SIP/2.0\r\n"
                     "Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-lg%d-%d-%s;rport\r\n"
                     "Max-Forwards: 70\r\nFrom: <sip:caller%d@127.0.0.1:%d>;tag=lg%d\r\n"
                     "To: <sip:agent@127.0.0.1:%d>%s\r\nCall-ID: lg-%d-%d@127.0.0.1\r\n"
                     "CSeq: %d %s\r\nContact: <sip:caller%d@127.0.0.1:%d>\r\n"
                     "%sContent-Length: %d\r\n\r\n%s",
                     method, opt.port, sip_port, (int)getpid(), i, branch, i, sip_port, i,
                     opt.port, to_tag, (int)getpid(), i, bye ? 2 : 1, method, i, sip_port,
                     invite ? "Content-Type: application/sdp\r\n" : "", body, invite ? sdp : "");
    sip_send(msg, n);
}

/* Open call i: its RTP socket, then the INVITE. */
static void rtp_connect(int i) {
    struct conn *c = &conns[i];
    c->opened = 0;
    c->frames_sent = 0;
    c->to_tag[0] = 0;
    c->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in local = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    c->state = CONNECTING;
    if (c->fd < 0 || bind(c->fd, (struct sockaddr *)&local, sizeof local) < 0) {
        if (c->fd >= 0) close(c->fd);
        c->state = DONE;
        resolve(0);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    c->state = HANDSHAKE;
    c->invited_at = now_ns();
    c->retry_gap = SIP_T1_NS;
    c->retry_at = c->invited_at + SIP_T1_NS;
    pending_sip++;
    sip_request(i, "INVITE", "INVITE");
}

static int send_rtp(int i, uint64_t k, const uint8_t *payload) {
    struct conn *c = &conns[i];
    uint8_t packet[12 + FRAME_BYTES];
    uint32_t timestamp = (uint32_t)(k * FRAME_BYTES), ssrc = 0x10000 + (uint32_t)i;
    packet[0] = 0x80;
    packet[1] = (uint8_t)(k == 0 ? 0x80 : 0x00); /* PCMU; the marker starts the stream */
    packet[2] = (uint8_t)(c->rtp_seq >> 8);
    packet[3] = (uint8_t)c->rtp_seq;
    for (int b = 0; b < 4; b++) {
        packet[4 + b] = (uint8_t)(timestamp >> (24 - 8 * b));
        packet[8 + b] = (uint8_t)(ssrc >> (24 - 8 * b));
    }
    memcpy(packet + 12, payload, FRAME_BYTES);
    c->rtp_seq++;
    return send(c->fd, packet, sizeof packet, 0) == (ssize_t)sizeof packet ? 0 : -1;
}

/* Every packet waiting on call i's RTP socket: PCMU ones are echoes. */
static void rtp_readable(int i) {
    uint8_t packet[2048];
    for (;;) {
        ssize_t n = recv(conns[i].fd, packet, sizeof packet, 0);
        if (n < 0 && errno == EAGAIN) return;
        if (n < 0) continue; /* an ICMP error of an earlier send */
        int64_t t = now_ns();
        size_t header = 12 + 4 * (size_t)(packet[0] & 0x0F);
        if (n >= 12 && (packet[0] & 0x10) && (size_t)n >= header + 4)
            header += 4 + 4 * (size_t)(packet[header + 2] << 8 | packet[header + 3]);
        if (n < 12 || packet[0] >> 6 != 2 || (size_t)n <= header) corrupt++;
        else if ((packet[1] & 0x7F) != 0) other_messages++;
        else echo_arrived(packet + header, (size_t)n - header, t);
    }
}

/* The value of header `name` (or its compact form) in a SIP message, copied into out. */
static int sip_header(const char *msg, const char *name, char compact, char *out, size_t size) {
    size_t len = strlen(name);
    for (const char *line = strstr(msg, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2, *v;
        if (h[0] == '\r') return -1; /* the end of the headers */
        if (!strncasecmp(h, name, len) && (h[len] == ':' || h[len] == ' ')) v = h + len;
        else if (compact && tolower((unsigned char)h[0]) == compact && (h[1] == ':' || h[1] == ' '))
            v = h + 1;
        else continue;
        while (*v == ' ' || *v == ':') v++;
        const char *end = strstr(v, "\r\n");
        size_t n = end ? (size_t)(end - v) : strlen(v);
        if (n >= size) n = size - 1;
        memcpy(out, v, n);
        out[n] = 0;
        return 0;
    }
    return -1;
}

/* The call a SIP message belongs to (its Call-ID is ours), or -1. */
static int sip_call(const char *msg) {
    char id[128];
    int pid, i;
    if (sip_header(msg, "Call-ID", 'i', id, sizeof id) < 0) return -1;
    if (sscanf(id, "lg-%d-%d@", &pid, &i) != 2 || pid != (int)getpid() || i < 0 || i >= opt.calls)
        return -1;
    return i;
}

/* The 200 OK to call i's INVITE: where its RTP goes, per the answer's SDP. */
static int rtp_answered(int i, const char *msg) {
    const char *body = strstr(msg, "\r\n\r\n"), *c_line, *m_line;
    char addr[64];
    int port;
    if (!body || !(c_line = strstr(body, "c=IN IP4 ")) || !(m_line = strstr(body, "m=audio ")) ||
        sscanf(c_line + 9, "%63[0-9.]", addr) != 1 || sscanf(m_line + 8, "%d", &port) != 1)
        return -1;
    struct sockaddr_in media = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, addr, &media.sin_addr) != 1) return -1;
    return connect(conns[i].fd, (struct sockaddr *)&media, sizeof media);
}

static void sip_response(const char *msg) {
    int status = atoi(msg + 8), i = sip_call(msg);
    char cseq[64], to[256];
    if (i < 0 || sip_header(msg, "CSeq", 0, cseq, sizeof cseq) < 0) return;
    struct conn *c = &conns[i];
    if (strstr(cseq, "BYE")) {
        if (status >= 200 && c->state == CLOSING) pending_sip--, close_conn(i, 0);
        return;
    }
    if (!strstr(cseq, "INVITE")) return;
    if (status < 200) { /* provisional: the server has it; stop sending it again */
        if (c->state == HANDSHAKE) c->retry_at = INT64_MAX;
        return;
    }
    if (c->state == HANDSHAKE && sip_header(msg, "To", 't', to, sizeof to) == 0) {
        const char *tag = strstr(to, "tag=");
        if (tag) snprintf(c->to_tag, sizeof c->to_tag, "%.*s", (int)strcspn(tag + 4, ";>"), tag + 4);
    }
    /* each final response again too: our ACK may have been lost */
    sip_request(i, "ACK", status >= 300 ? "INVITE" : "ACK");
    if (c->state != HANDSHAKE) return;
    pending_sip--;
    if (status >= 300 || rtp_answered(i, msg) < 0) {
        count_close(status >= 300 ? status : 0);
        close_conn(i, 0);
        return;
    }
    push_rtt(&setups, &setup_count, &setup_cap, (uint64_t)(now_ns() - c->invited_at));
    c->state = OPEN;
    c->opened = 1;
    calls_opened++;
    icalls_opened++;
    resolve(1);
}

/* A request from the server: a BYE ends its call; any request is answered 200. */
static void sip_from_server(const char *msg) {
    char via[512], from[256], to[256], id[128], cseq[64], reply[SIP_BUF];
    if (sip_header(msg, "Via", 'v', via, sizeof via) < 0 ||
        sip_header(msg, "From", 'f', from, sizeof from) < 0 ||
        sip_header(msg, "To", 't', to, sizeof to) < 0 ||
        sip_header(msg, "Call-ID", 'i', id, sizeof id) < 0 ||
        sip_header(msg, "CSeq", 0, cseq, sizeof cseq) < 0)
        return;
    if (!strncmp(msg, "ACK ", 4)) return;
    int n = snprintf(reply, sizeof reply,
                     "SIP/2.0 200 OK\r\nVia: %s\r\nFrom: %s\r\nTo: %s\r\nCall-ID: %s\r\n"
                     "CSeq: %s\r\nContent-Length: 0\r\n\r\n",
                     via, from, to, id, cseq);
    sip_send(reply, n);
    int i = sip_call(msg);
    if (i >= 0 && !strncmp(msg, "BYE ", 4) && conns[i].state == OPEN) {
        count_close(0);
        server_ended(i, 0, now_ns());
        close_conn(i, 1);
    }
}

static void sip_readable(void) {
    char msg[SIP_BUF];
    for (;;) {
        ssize_t n = recv(sip_fd, msg, sizeof msg - 1, 0);
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) continue;
        msg[n] = 0;
        if (!strncmp(msg, "SIP/2.0 ", 8)) sip_response(msg);
        else sip_from_server(msg);
    }
}

/* INVITEs and BYEs unanswered: sent again (0.5, 1, 2, 4 s apart); an INVITE fails 8 s on. */
static void sip_timers(int64_t now) {
    if (!pending_sip) return;
    for (int i = 0; i < opt.calls; i++) {
        struct conn *c = &conns[i];
        if (c->state == HANDSHAKE && now >= c->invited_at + SIP_GIVE_UP_NS) {
            pending_sip--;
            count_close(408);
            close_conn(i, 0);
        } else if ((c->state == HANDSHAKE || c->state == CLOSING) && now >= c->retry_at) {
            const char *method = c->state == HANDSHAKE ? "INVITE" : "BYE";
            sip_request(i, method, method);
            c->retry_gap *= 2;
            c->retry_at = now + c->retry_gap;
        }
    }
}

/* Hang up every call still up (BYE), waiting up to 2 s for the 200 OKs. */
static void hang_up_all(void) {
    int64_t now = now_ns();
    for (int i = 0; i < opt.calls; i++) {
        struct conn *c = &conns[i];
        if (c->state == OPEN) {
            c->state = CLOSING;
            c->retry_gap = SIP_T1_NS;
            c->retry_at = now + SIP_T1_NS;
            pending_sip++;
            sip_request(i, "BYE", "BYE");
        } else if (c->state != DONE) {
            if (c->state == HANDSHAKE) pending_sip--;
            close_conn(i, 0);
        }
    }
    int64_t deadline = now + 2000000000LL;
    struct epoll_event events[256];
    while (pending_sip > 0 && (now = now_ns()) < deadline) {
        sip_timers(now);
        int n = epoll_wait(epfd, events, 256, 50);
        for (int e = 0; e < n; e++) {
            uint32_t i = events[e].data.u32;
            if (i == SIP_ID) sip_readable();
            else if (i != TIMER_ID && conns[i].state != DONE) rtp_readable((int)i);
        }
    }
    for (int i = 0; i < opt.calls; i++)
        if (conns[i].state != DONE) close_conn(i, 0);
}

/* -- the schedule ------------------------------------------------------------------------------ */

/* Slot g is frame g / N of connection g % N; the calls' frames are spread over the period. */
static int64_t slot_time(uint64_t g) {
    uint64_t n = (uint64_t)opt.calls;
    return t0 + (int64_t)(g / n) * period_ns + (int64_t)((g % n) * (uint64_t)period_ns / n);
}

/* Whether every call of a conversation run has ended (or never opened). */
static int all_ended(void) {
    for (int i = 0; i < opt.calls; i++)
        if (conns[i].state != DONE && !conns[i].ended) return 0;
    return 1;
}

static int64_t open_time(int i) {
    return t0 + (int64_t)(opt.ramp * 1e9 * i / opt.calls);
}

static void send_slot(uint64_t g, int64_t due) {
    int i = (int)(g % (uint64_t)opt.calls);
    struct conn *c = &conns[i];
    int in_window = !opt.idle && due >= m0 && due < m1;
    if (opt.churn > 0 && (c->state != OPEN || due >= c->ends_at)) return; /* between calls */
    expected += in_window;
    if (c->state != OPEN || (opt.idle && c->frames_sent > 0)) {
        dropped += in_window;
        return;
    }
    if (send_frame(i, g / (uint64_t)opt.calls, in_window) < 0) {
        dropped += in_window;
        return;
    }
    c->frames_sent++;
    sent += in_window;
    isent += in_window;
}

static void arm_timer(int64_t at) {
    static int64_t armed;
    if (at == armed) return; /* still armed for that time: no system call */
    armed = at;
    struct itimerspec its = {0};
    its.it_value.tv_sec = at / 1000000000LL;
    its.it_value.tv_nsec = at % 1000000000LL;
    timerfd_settime(timerfd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* Close every open connection cleanly, waiting up to 1 s for the servers' close frames. */
static void hang_up_all(void);

static void close_all(void) {
    static const uint8_t normal[2] = {0x03, 0xE8}; /* 1000 */
    if (opt.rtp) { hang_up_all(); return; }
    int open = 0;
    for (int i = 0; i < opt.calls; i++) {
        if (conns[i].state == OPEN) {
            conns[i].state = CLOSING;
            send_ws(i, 0x8, normal, 2);
            open += conns[i].state == CLOSING;
        } else if (conns[i].state != DONE) {
            close_conn(i, 0);
        }
    }
    int64_t deadline = now_ns() + 1000000000LL;
    struct epoll_event events[256];
    while (open > 0 && now_ns() < deadline) {
        int n = epoll_wait(epfd, events, 256, 50);
        for (int e = 0; e < n; e++) {
            uint32_t i = events[e].data.u32;
            if (i == TIMER_ID) continue;
            on_event(i, events[e].events);
        }
        open = 0;
        for (int i = 0; i < opt.calls; i++) open += conns[i].state == CLOSING;
    }
    for (int i = 0; i < opt.calls; i++)
        if (conns[i].state != DONE) close_conn(i, 0);
}

/* -- the report --------------------------------------------------------------------------------- */

static int by_value(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static double percentile_of(const uint64_t *v, size_t n, double p) {
    if (!n) return NAN;
    size_t rank = (size_t)ceil(p / 100.0 * (double)n);
    return v[(rank ? rank : 1) - 1] / 1e6;
}

static double percentile_ms(double p) { return percentile_of(rtts, rtt_count, p); }

static void print_ms(const char *name, double v, const char *sep) {
    if (isnan(v)) printf("\"%s\":null%s", name, sep);
    else printf("\"%s\":%.3f%s", name, v, sep);
}

/* --report: one line for the interval that ends at `t` (seconds into the window). */
static void report_interval(double t) {
    qsort(irtts, irtt_count, sizeof *irtts, by_value);
    printf("{\"interval\":true,\"t\":%.3f,\"sent\":%llu,\"received\":%llu,", t,
           (unsigned long long)isent, (unsigned long long)ireceived);
    printf("\"calls_opened\":%llu,\"calls_ended\":%llu,\"closed_by_server\":%llu,",
           (unsigned long long)icalls_opened, (unsigned long long)icalls_ended,
           (unsigned long long)icalls_closed);
    int up = 0;
    for (int i = 0; i < opt.calls; i++) up += conns[i].state == OPEN;
    printf("\"calls_up\":%d,\"rtt_ms\":{", up);
    print_ms("p50", percentile_of(irtts, irtt_count, 50), ",");
    print_ms("p99", percentile_of(irtts, irtt_count, 99), ",");
    print_ms("p99.9", percentile_of(irtts, irtt_count, 99.9), ",");
    print_ms("max", irtt_count ? irtts[irtt_count - 1] / 1e6 : NAN, "}}\n");
    fflush(stdout);
    irtt_count = 0;
    isent = ireceived = icalls_opened = icalls_ended = icalls_closed = 0;
}

/* --churn: end calls whose time is up, and dial new ones in the slots that are free. */
static void churn(int64_t now) {
    static const uint8_t normal[2] = {0x03, 0xE8}; /* 1000 */
    for (int i = 0; i < opt.calls; i++) {
        struct conn *c = &conns[i];
        if (c->state == OPEN && now >= c->ends_at + DRAIN_NS) {
            c->state = CLOSING;
            c->closing_at = now;
            send_ws(i, 0x8, normal, 2);
        } else if (c->state == CLOSING && now >= c->closing_at + CLOSE_WAIT_NS) {
            close_conn(i, 0);
        } else if (c->state == DONE && c->dialled && now >= c->redial_at && now < m1) {
            start_connect(i);
        }
    }
}

static double rel_ms(int64_t t) { return t ? (double)(t - t0) / 1e6 : NAN; }

static void print_rel(int64_t t, const char *sep) {
    if (t) printf("%.3f%s", rel_ms(t), sep);
    else printf("null%s", sep);
}

/* The conversations: each utterance and its reply, each call's end. */
static void report_conversations(void) {
    printf("\"window_ms\":[%.3f,%.3f],\"utterance_fields\":[\"call\",\"kind\",\"clip\","
           "\"over\",\"start_ms\",\"end_ms\",\"reply_ms\",\"audible_frames\",\"frames\","
           "\"max_lag_ms\",\"max_gap_ms\",\"overlapped\",\"clear_ms\"],\"utterances\":[",
           rel_ms(m0), rel_ms(m1));
    for (size_t k = 0; k < utt_count; k++) {
        const struct utterance *u = &utts[k];
        printf("%s[%d,\"%s\",%d,%d,", k ? "," : "", u->call, KIND_NAMES[u->kind], u->clip, u->over);
        print_rel(u->start, ",");
        print_rel(u->end, ",");
        print_rel(u->reply, ",");
        printf("%u,%u,%.3f,%.3f,%d,", u->audible, u->frames, u->max_lag / 1e6, u->max_gap / 1e6,
               u->overlapped);
        print_rel(u->clear, "]");
    }
    printf("],\"call_fields\":[\"call\",\"opened\",\"ended_ms\",\"end_code\"],\"call_ends\":[");
    for (int i = 0; i < opt.calls; i++) {
        printf("%s[%d,%d,", i ? "," : "", i, conns[i].opened);
        print_rel(conns[i].ended, ",");
        printf("%d]", conns[i].end_code);
    }
    printf("],");
}

static void report(double window_cpu, double window_s) {
    qsort(rtts, rtt_count, sizeof *rtts, by_value);
    const char *mode = talking ? "conversation" : opt.rtp ? "rtp" : opt.twilio ? "twilio" : "raw";
    printf("{\"calls\":%d,\"mode\":\"%s\",\"idle\":%s,\"fps\":%d,\"seconds\":%.3f,", opt.calls,
           mode, opt.idle ? "true" : "false", opt.fps, opt.seconds);
    if (talking) report_conversations();
    printf("\"opened\":%d,\"failed\":%d,\"closed\":%d,\"close_codes\":{", opened_count,
           opt.calls - opened_count, closed_early);
    for (int k = 0; k < code_kinds; k++)
        printf("%s\"%d\":%d", k ? "," : "", codes[k], code_counts[k]);
    printf("},\"expected\":%llu,\"sent\":%llu,\"received\":%llu,\"dropped\":%llu,",
           (unsigned long long)expected, (unsigned long long)sent,
           (unsigned long long)received, (unsigned long long)dropped);
    printf("\"corrupt\":%llu,\"other_messages\":%llu,", (unsigned long long)corrupt,
           (unsigned long long)other_messages);
    printf("\"calls_opened\":%llu,\"calls_ended\":%llu,\"calls_failed\":%llu,",
           (unsigned long long)calls_opened, (unsigned long long)calls_ended,
           (unsigned long long)calls_failed);
    if (expected) printf("\"throughput\":%.6f,", (double)received / (double)expected);
    else printf("\"throughput\":null,");
    printf("\"rtt_ms\":{");
    print_ms("p50", percentile_ms(50), ",");
    print_ms("p90", percentile_ms(90), ",");
    print_ms("p99", percentile_ms(99), ",");
    print_ms("p99.9", percentile_ms(99.9), ",");
    print_ms("max", rtt_count ? rtts[rtt_count - 1] / 1e6 : NAN, "},");
    if (opt.rtp) {
        qsort(setups, setup_count, sizeof *setups, by_value);
        printf("\"setup_ms\":{");
        print_ms("p50", percentile_of(setups, setup_count, 50), ",");
        print_ms("p99", percentile_of(setups, setup_count, 99), ",");
        print_ms("max", setup_count ? setups[setup_count - 1] / 1e6 : NAN, "},");
    }
    printf("\"loadgen_cpu_s\":%.3f,\"loadgen_cpu_percent\":%.2f}\n", cpu_seconds(),
           window_s > 0 ? window_cpu / window_s * 100 : 0.0);
}

/* -- main ------------------------------------------------------------------------------------------ */

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P [--path PATH] [--twilio | --rtp] [--calls N] [--ramp S]\n"
            "               [--warmup S] [--seconds S] [--grace S] [--fps N] [--idle]\n"
            "               [--churn S] [--report S] [--clip FILE]... [--goodbye FILE]\n"
            "               [--noise FILE] [--period S] [--greeting-timeout S] [--barge-in S]\n");
    exit(2);
}

static void parse(int argc, char **argv) {
    static struct option longs[] = {
        {"port", 1, 0, 'p'},   {"path", 1, 0, 'P'},    {"twilio", 0, 0, 't'},
        {"calls", 1, 0, 'n'},  {"ramp", 1, 0, 'r'},    {"warmup", 1, 0, 'w'},
        {"seconds", 1, 0, 's'}, {"grace", 1, 0, 'g'},  {"fps", 1, 0, 'f'},
        {"idle", 0, 0, 'i'},   {"churn", 1, 0, 'c'},   {"report", 1, 0, 'R'},
        {"clip", 1, 0, 'C'},   {"goodbye", 1, 0, 'G'}, {"noise", 1, 0, 'N'},
        {"period", 1, 0, 'T'}, {"greeting-timeout", 1, 0, 'W'}, {"barge-in", 1, 0, 'B'},
        {"rtp", 0, 0, 'U'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (ch) {
        case 'p': opt.port = atoi(optarg); break;
        case 'P': opt.path = optarg; break;
        case 't': opt.twilio = 1; break;
        case 'n': opt.calls = atoi(optarg); break;
        case 'r': opt.ramp = atof(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 's': opt.seconds = atof(optarg); break;
        case 'g': opt.grace = atof(optarg); break;
        case 'f': opt.fps = atoi(optarg); break;
        case 'i': opt.idle = 1; break;
        case 'c': opt.churn = atof(optarg); break;
        case 'R': opt.report = atof(optarg); break;
        case 'C':
            if (opt.nclips == MAX_CLIPS) usage();
            opt.clips[opt.nclips++] = optarg;
            break;
        case 'G': opt.goodbye = optarg; break;
        case 'N': opt.noise = optarg; break;
        case 'T': opt.period = atof(optarg); break;
        case 'W': opt.greeting_timeout = atof(optarg); break;
        case 'B': opt.barge_in = atof(optarg); break;
        case 'U': opt.rtp = 1; break;
        default: usage();
        }
    }
    if (opt.port <= 0 || opt.port > 65535 || opt.calls < 1 || opt.calls > 100000 ||
        opt.fps < 1 || opt.fps > 1000 || opt.seconds <= 0 || opt.seconds > 86400 ||
        opt.churn < 0 || opt.report < 0 || (opt.churn > 0 && opt.idle) ||
        opt.ramp < 0 || opt.ramp > 600 || opt.warmup < 0 || opt.warmup > 600 ||
        opt.grace < 0 || opt.grace > 600 || strlen(opt.path) > 256 || opt.path[0] != '/' ||
        (opt.nclips && (!opt.goodbye || opt.idle || opt.churn > 0)) || opt.period <= 0 ||
        opt.greeting_timeout < 0 || (opt.rtp && (opt.twilio || opt.churn > 0 || opt.nclips)))
        usage();
    talking = opt.nclips > 0;
    if (talking) opt.twilio = 1;
}

int main(int argc, char **argv) {
    parse(argc, argv);
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    conns = calloc((size_t)opt.calls, sizeof *conns);
    epfd = epoll_create1(0);
    timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    if (!conns || epfd < 0 || timerfd < 0) { perror("loadgen"); return 1; }
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = TIMER_ID};
    epoll_ctl(epfd, EPOLL_CTL_ADD, timerfd, &tev);
    if (talking) {
        ulaw_table();
        for (int k = 0; k < opt.nclips; k++) clips[k] = read_clip(opt.clips[k]);
        goodbye_clip = read_clip(opt.goodbye);
        if (opt.noise) noise_clip = read_clip(opt.noise);
        for (int i = 0; i < opt.calls; i++) {
            conns[i].owner = conns[i].speaking = conns[i].last_said = -1;
            conns[i].noise_pos = (size_t)i * 7919;
        }
    }

    if (opt.rtp) sip_setup();
    period_ns = 1000000000LL / opt.fps;
    t0 = now_ns();
    for (int i = 0; i < opt.calls; i++) conns[i].mask_seed = 2463534242u ^ (uint32_t)(i * 2654435761u);
    if (!opt.idle) {
        m0 = t0 + (int64_t)((opt.ramp + opt.warmup) * 1e9);
        m1 = m0 + (int64_t)(opt.seconds * 1e9);
    }
    int64_t deadline = t0 + (int64_t)((opt.ramp + opt.warmup + opt.seconds + opt.grace + 30) * 1e9);
    int64_t send_until = talking ? m1 + (int64_t)(opt.grace * 1e9) : m1; /* frames due before */
    int next_open = 0, measuring = 0;
    uint64_t next_slot = 0;
    int64_t next_report = INT64_MAX;
    double cpu_at_m0 = 0, window_cpu = 0, window_s = 0;
    struct epoll_event events[256];

    for (;;) {
        int64_t now = now_ns();
        while (next_open < opt.calls && open_time(next_open) <= now) start_connect(next_open++);
        if (opt.churn > 0) churn(now);
        if (opt.rtp) sip_timers(now);
        if (!measuring && now >= m0) { /* before this turn's sends, which the window counts */
            measuring = 1;
            cpu_at_m0 = cpu_seconds();
            progress("measure");
            irtt_count = 0;
            isent = ireceived = icalls_opened = icalls_ended = icalls_closed = 0;
            if (opt.report > 0) next_report = m0 + (int64_t)(opt.report * 1e9);
        }
        while (slot_time(next_slot) <= now && slot_time(next_slot) < send_until)
            send_slot(next_slot, slot_time(next_slot)), next_slot++;
        while (measuring == 1 && now >= next_report && next_report <= m1) {
            report_interval((double)(next_report - m0) / 1e9);
            next_report += (int64_t)(opt.report * 1e9);
        }
        if (measuring == 1 && now >= m1) {
            measuring = 2;
            window_cpu = cpu_seconds() - cpu_at_m0;
            window_s = (double)(now - m0) / 1e9;
            progress("measured");
        }
        int all_back = talking ? all_ended() : received >= sent && opt.churn == 0;
        if (measuring == 2 && (opt.idle || all_back || now >= m1 + (int64_t)(opt.grace * 1e9)))
            break;
        if (now >= deadline) {
            progress("loadgen: deadline passed; giving up");
            break;
        }
        int64_t wake = m1 + (int64_t)(opt.grace * 1e9);
        if (next_open < opt.calls && open_time(next_open) < wake) wake = open_time(next_open);
        if (slot_time(next_slot) < send_until && slot_time(next_slot) < wake)
            wake = slot_time(next_slot);
        if (!measuring && m0 < wake) wake = m0;
        if (measuring == 1 && m1 < wake) wake = m1;
        if (measuring == 1 && next_report < wake) wake = next_report;
        if (opt.churn > 0 && now + 20000000LL < wake) wake = now + 20000000LL; /* churn ticks */
        if (pending_sip && now + 50000000LL < wake) wake = now + 50000000LL; /* SIP timers */
        if (wake > deadline) wake = deadline;
        if (wake < now + MIN_GAP_NS) wake = now + MIN_GAP_NS;
        arm_timer(wake);
        int n = epoll_wait(epfd, events, 256, -1);
        if (n < 0 && errno != EINTR) { perror("loadgen: epoll_wait"); return 1; }
        for (int e = 0; e < n; e++) {
            uint32_t i = events[e].data.u32;
            if (i == TIMER_ID) {
                uint64_t ticks;
                if (read(timerfd, &ticks, sizeof ticks) < 0 && errno != EAGAIN) return 1;
                continue;
            }
            if (i == SIP_ID) sip_readable();
            else if (conns[i].state != DONE) on_event(i, events[e].events);
        }
    }
    collecting = 0;
    while (next_open < opt.calls) conns[next_open].state = DONE, resolve(0), next_open++;
    close_all();
    report(window_cpu, window_s);
    return 0;
}
