#!/usr/bin/env node
// An SOE echo client written on a third-party codec: the npm package h1emu-core
// (the SOE layer of the H1Z1 emulator, Rust compiled to WASM). It reads every
// datagram the server sends with h1emu-core's `parse()` and fails on any it cannot
// read, so what we send is checked by an independent reader.
//
// It behaves unlike our own client on purpose: a fixed tick, multi-packets with
// one-byte item lengths (items over 255 bytes travel alone), cumulative acks only,
// a fixed 250 ms retransmission timeout that doubles per resend, no data bundles.
//
// Usage: node client.js --target HOST:PORT [--window N] [--messages N]
//        [--min-size B] [--max-size B] [--sessions N] [--tick-ms MS]
//        [--app-protocol NAME] [--timeout-s S] [--seed N] [--json]
// Exit 0 when every session echoed every message and every datagram parsed;
// prints one JSON line of results with --json.
'use strict';

const dgram = require('dgram');
const h1 = require('h1emu-core');

const args = parseArgs(process.argv.slice(2));
const [host, portText] = (args.target || '').split(':');
if (!host || !portText) {
  console.error('usage: client.js --target HOST:PORT [options]');
  process.exit(2);
}
const opts = {
  host,
  port: Number(portText),
  window: int(args.window, 8),
  messages: int(args.messages, 1000),
  minSize: int(args['min-size'], 1),
  maxSize: int(args['max-size'], 5000),
  sessions: int(args.sessions, 1),
  tickMs: int(args['tick-ms'], 10),
  appProtocol: args['app-protocol'] || 'loadgen',
  timeoutS: int(args['timeout-s'], 60),
  seed: int(args.seed, 1),
  json: 'json' in args,
};

const UDP_LENGTH = 512;
const CRC_LENGTH = 2;
const RTO_MS = 250;
const MAX_RTO_MS = 4000;
// Largest cooked packet that fits a datagram with its CRC.
const MAX_PACKET = UDP_LENGTH - CRC_LENGTH;
// Payload room of a reliable packet after op code and sequence.
const DATA_ROOM = MAX_PACKET - 4;

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) continue;
    const key = a.slice(2);
    const next = argv[i + 1];
    if (next === undefined || next.startsWith('--')) {
      out[key] = true;
    } else {
      out[key] = next;
      i++;
    }
  }
  return out;
}

function int(v, dflt) {
  return v === undefined ? dflt : Number(v);
}

// A small deterministic PRNG (xorshift32), so runs repeat.
function rng(seed) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

const u16 = (n) => Buffer.from([(n >> 8) & 0xff, n & 0xff]);
const u32 = (n) => Buffer.from([(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff]);

// Totals over every session.
const totals = {
  sessions: 0,
  sessions_ok: 0,
  messages_sent: 0,
  messages_echoed: 0,
  datagrams_received: 0,
  datagrams_sent: 0,
  parse_failures: 0,
  multi_packets_received: 0,
  bundles_received: 0,
  fragments_received: 0,
  resends: 0,
  max_item_received: 0,
  errors: [],
};

class Session {
  constructor(index, random) {
    this.index = index;
    this.random = random;
    this.socket = dgram.createSocket('udp4');
    this.sessionId = random() >>> 0;
    this.codec = new h1.Soeprotocol(true, 0);
    this.crcSeed = 0;
    this.connected = false;
    // Sending.
    this.nextSeq = 0;
    this.unacked = new Map(); // seq -> {packet, sentAt, rto}
    this.outbox = []; // cooked packets not sent yet
    // Receiving.
    this.expected = 0; // next in-order sequence (16-bit)
    this.stash = new Map(); // seq -> {fragment, data}
    this.ackOwed = false;
    this.reassembly = null; // {total, parts, have}
    // Workload.
    this.sent = []; // messages awaiting their echo, in order
    this.toSend = opts.messages;
    this.echoed = 0;
    this.done = null;
  }

  fail(message) {
    totals.errors.push(`session ${this.index}: ${message}`);
    this.finish(false);
  }

  start() {
    return new Promise((resolve) => {
      this.done = resolve;
      this.socket.on('message', (buf) => this.onDatagram(buf));
      this.socket.on('error', (e) => this.fail(`socket error ${e.message}`));
      this.socket.bind(0, '127.0.0.1', () => {
        this.sendRaw(
          Buffer.from(
            this.codec.pack_session_request_packet(this.sessionId, CRC_LENGTH, UDP_LENGTH, opts.appProtocol),
          ),
        );
        this.requestTimer = setInterval(() => {
          if (!this.connected) {
            this.sendRaw(
              Buffer.from(
                this.codec.pack_session_request_packet(this.sessionId, CRC_LENGTH, UDP_LENGTH, opts.appProtocol),
              ),
            );
          }
        }, 1000);
        this.tickTimer = setInterval(() => this.tick(), opts.tickMs);
        this.deadline = setTimeout(
          () => this.fail(`timed out after ${opts.timeoutS} s with ${this.echoed}/${opts.messages} echoed`),
          opts.timeoutS * 1000,
        );
      });
    });
  }

  finish(ok) {
    if (!this.done) return;
    clearInterval(this.requestTimer);
    clearInterval(this.tickTimer);
    clearTimeout(this.deadline);
    if (this.connected) {
      // Disconnect (reason 6, Application), sealed with the CRC.
      const packet = Buffer.concat([Buffer.from([0, 5]), u32(this.sessionId), u16(6)]);
      this.sendRaw(this.seal(packet));
    }
    const done = this.done;
    this.done = null;
    setTimeout(() => {
      this.socket.close();
      done(ok);
    }, 5);
  }

  sendRaw(buf) {
    totals.datagrams_sent++;
    this.socket.send(buf, opts.port, opts.host);
  }

  seal(cooked) {
    return Buffer.from(h1.append_crc_legacy(cooked, this.crcSeed));
  }

  onDatagram(buf) {
    if (!this.done) return;
    totals.datagrams_received++;
    // h1emu-core quirk: a multi-packet with a bad sub-packet turns CRC checking off
    // for every later parse. Turn it back on before each datagram.
    if (this.connected && !this.codec.is_using_crc()) this.codec.enable_crc();
    let parsed;
    try {
      parsed = JSON.parse(this.codec.parse(buf));
    } catch (e) {
      return this.parseFailure(buf, `unparsable JSON from parse(): ${e.message}`);
    }
    this.handle(parsed, buf, 0);
  }

  parseFailure(buf, why) {
    totals.parse_failures++;
    this.fail(`parse() could not read a datagram (${why}): ${buf.toString('hex').slice(0, 120)}`);
  }

  handle(p, raw, depth) {
    switch (p.name) {
      case 'SessionReply':
        if (this.connected) return;
        if (p.session_id !== this.sessionId) return this.fail('SessionReply for another session');
        if (p.crc_length !== CRC_LENGTH) return this.fail(`server chose CRC length ${p.crc_length}`);
        if (p.encrypt_method !== 0) return this.fail(`server enabled compression (${p.encrypt_method})`);
        this.crcSeed = p.crc_seed;
        this.codec.set_crc_seed(p.crc_seed);
        this.codec.enable_crc();
        this.connected = true;
        this.fill();
        this.flush();
        return;
      case 'MultiPacket':
        totals.multi_packets_received++;
        for (const sub of p.sub_packets) this.handle(sub, raw, depth + 1);
        return;
      case 'Data':
        return this.onReliable(p.sequence, Buffer.from(p.data), false);
      case 'DataFragment':
        totals.fragments_received++;
        return this.onReliable(p.sequence, Buffer.from(p.data), true);
      case 'Ack':
        return this.onAck(p.sequence);
      case 'OutOfOrder':
        return this.onSelectiveAck(p.sequence);
      case 'Ping':
        return;
      case 'Disconnect':
        return this.fail(`server disconnected: ${p.reason}`);
      case 'FatalError':
        return this.fail('server answered UnknownSender');
      case 'Error':
        return this.parseFailure(raw, `${p.error}${depth ? ' in a sub-packet' : ''}`);
      default:
        return this.parseFailure(raw, `unexpected ${p.name}${depth ? ' sub-packet' : ''}`);
    }
  }

  // 16-bit sequence distance from the next expected one (negative = old).
  distance(seq) {
    let d = (seq - this.expected) & 0xffff;
    if (d >= 0x8000) d -= 0x10000;
    return d;
  }

  onReliable(seq, payload, fragment) {
    const d = this.distance(seq);
    this.ackOwed = true;
    if (d < 0) return; // a repeat: the cumulative ack answers it
    if (d > 0) {
      this.stash.set(seq, { fragment, payload });
      return;
    }
    this.accept(fragment, payload);
    this.expected = (this.expected + 1) & 0xffff;
    for (;;) {
      const next = this.stash.get(this.expected);
      if (!next) break;
      this.stash.delete(this.expected);
      this.accept(next.fragment, next.payload);
      this.expected = (this.expected + 1) & 0xffff;
    }
  }

  accept(fragment, payload) {
    if (!fragment) {
      if (this.reassembly) return this.fail('plain data during a reassembly');
      return this.deliverPayload(payload);
    }
    if (!this.reassembly) {
      if (payload.length < 4) return this.fail('first fragment shorter than its length field');
      const total = payload.readUInt32BE(0);
      this.reassembly = { total, parts: [payload.subarray(4)], have: payload.length - 4 };
    } else {
      this.reassembly.parts.push(payload);
      this.reassembly.have += payload.length;
    }
    if (this.reassembly.have >= this.reassembly.total) {
      const { total, parts } = this.reassembly;
      const whole = Buffer.concat(parts);
      this.reassembly = null;
      if (whole.length !== total) return this.fail(`fragments carry ${whole.length} B for ${total}`);
      this.deliverPayload(whole);
    }
  }

  // A reliable payload: a data bundle (`00 19`, items with variable lengths) or one message.
  deliverPayload(payload) {
    if (payload.length > 2 && payload[0] === 0 && payload[1] === 0x19) {
      totals.bundles_received++;
      let at = 2;
      while (at < payload.length) {
        let len = payload[at];
        if (len < 0xff) {
          at += 1;
        } else if (payload[at + 1] === 0xff && payload[at + 2] === 0xff) {
          len = payload.readUInt32BE(at + 3);
          at += 7;
        } else {
          len = payload.readUInt16BE(at + 1);
          at += 3;
        }
        if (at + len > payload.length) return this.fail('bundle item runs past its packet');
        this.deliver(payload.subarray(at, at + len));
        at += len;
      }
      return;
    }
    this.deliver(payload);
  }

  deliver(message) {
    const want = this.sent.shift();
    if (!want) return this.fail('an echo nobody asked for');
    if (!want.equals(message)) {
      return this.fail(`echo ${this.echoed} differs: sent ${want.length} B, got ${message.length} B`);
    }
    this.echoed++;
    totals.messages_echoed++;
    if (this.echoed === opts.messages) {
      // Let the final ack go out before leaving.
      this.flush();
      return this.finish(true);
    }
    this.fill();
  }

  onAck(seq) {
    // Cumulative: everything up to and including `seq` arrived.
    for (const s of [...this.unacked.keys()]) {
      const d = (seq - s) & 0xffff;
      if (d < 0x8000) this.unacked.delete(s);
    }
  }

  onSelectiveAck(seq) {
    this.unacked.delete(seq);
  }

  // Keeps `window` messages in flight.
  fill() {
    while (this.toSend > 0 && this.sent.length < opts.window) {
      const size = opts.minSize + (this.random() % (opts.maxSize - opts.minSize + 1));
      const msg = Buffer.alloc(size);
      for (let i = 0; i < size; i++) msg[i] = this.random() & 0xff;
      msg[0] = 1 + (msg[0] % 255); // never starts with 00: no escaping questions
      this.sent.push(msg);
      this.toSend--;
      totals.messages_sent++;
      this.queueMessage(msg);
    }
  }

  queueMessage(msg) {
    if (msg.length <= DATA_ROOM) {
      this.queueReliable(Buffer.concat([Buffer.from([0, 9]), u16(this.nextSeq), msg]));
      return;
    }
    let at = 0;
    let first = true;
    while (at < msg.length) {
      const room = first ? DATA_ROOM - 4 : DATA_ROOM;
      const part = msg.subarray(at, at + room);
      const head = first ? Buffer.concat([Buffer.from([0, 0x0d]), u16(this.nextSeq), u32(msg.length)]) : Buffer.concat([Buffer.from([0, 0x0d]), u16(this.nextSeq)]);
      this.queueReliable(Buffer.concat([head, part]));
      at += part.length;
      first = false;
    }
  }

  queueReliable(packet) {
    this.unacked.set(this.nextSeq, { packet, sentAt: null, rto: RTO_MS });
    this.outbox.push(packet);
    this.nextSeq = (this.nextSeq + 1) & 0xffff;
  }

  tick() {
    if (!this.connected) return;
    const now = Date.now();
    for (const [, entry] of this.unacked) {
      if (entry.sentAt !== null && now - entry.sentAt >= entry.rto) {
        entry.rto = Math.min(entry.rto * 2, MAX_RTO_MS);
        entry.sentAt = null;
        totals.resends++;
        this.outbox.push(entry.packet);
      }
    }
    this.flush();
  }

  // Sends acks and queued packets: items up to 255 bytes share multi-packets (one
  // length byte each), bigger ones travel alone.
  flush() {
    const items = [];
    if (this.ackOwed) {
      this.ackOwed = false;
      const last = (this.expected - 1) & 0xffff;
      items.push(Buffer.concat([Buffer.from([0, 0x15]), u16(last)]));
    }
    const now = Date.now();
    for (const packet of this.outbox) {
      const seq = packet.readUInt16BE(2);
      const entry = this.unacked.get(seq);
      if (!entry || entry.packet !== packet) continue; // acked meanwhile
      entry.sentAt = now;
      items.push(packet);
    }
    this.outbox = [];
    let multi = [];
    let used = 2;
    const sendMulti = () => {
      if (multi.length === 1) this.sendRaw(this.seal(multi[0]));
      else if (multi.length > 1) {
        const parts = [Buffer.from([0, 3])];
        for (const m of multi) parts.push(Buffer.from([m.length]), m);
        this.sendRaw(this.seal(Buffer.concat(parts)));
      }
      multi = [];
      used = 2;
    };
    for (const item of items) {
      if (item.length > 255) {
        this.sendRaw(this.seal(item));
        continue;
      }
      if (used + 1 + item.length > MAX_PACKET) sendMulti();
      multi.push(item);
      used += 1 + item.length;
    }
    sendMulti();
  }
}

async function main() {
  const random = rng(opts.seed);
  const started = Date.now();
  for (let i = 0; i < opts.sessions; i++) {
    totals.sessions++;
    const ok = await new Session(i, random).start();
    if (ok) totals.sessions_ok++;
    else break;
  }
  const result = { ...opts, ...totals, elapsed_s: (Date.now() - started) / 1000 };
  if (opts.json) console.log(JSON.stringify(result));
  else console.log(result);
  const ok = totals.sessions_ok === opts.sessions && totals.parse_failures === 0 && totals.errors.length === 0;
  process.exit(ok ? 0 : 1);
}

main();
