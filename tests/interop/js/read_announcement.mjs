// A js-libp2p peer against a running swarm-node: dial it over TCP + Noise + Yamux, ping it,
// identify it, subscribe to gossipsub topic swarm/experts/1 (StrictSign), and decode and
// verify the first expert announcement it publishes, using nothing but protocols/WIRE.md.
//
//   node read_announcement.mjs <multiaddr ending in /p2p/<peer id>> [timeout_ms]
//
// Prints one JSON line on stdout with what it saw and exits 0; on any failure (timeout,
// a record WIRE.md says to drop) it prints the reason on stderr and exits 1.

import './node20.mjs'
import { createPublicKey, verify as cryptoVerify } from 'node:crypto'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@chainsafe/libp2p-gossipsub'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { decode, encode } from '@msgpack/msgpack'
import { multiaddr } from '@multiformats/multiaddr'
import { blake2b } from '@noble/hashes/blake2.js'
import { ml_dsa65 } from '@noble/post-quantum/ml-dsa.js'
import { createLibp2p } from 'libp2p'

const TOPIC = 'swarm/experts/1'
const MAX_BYTES = 20480
const SIGN_TAG = 'swarm-node/announce/v1\x00'
const BIND_TAG = 'swarm-node/bind/v1\x00'
const ED25519_PEER_PREFIX = Uint8Array.from([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
const SCHEMES = { 1: { name: 'ed25519', key: 32, sig: 64 }, 2: { name: 'ml-dsa-65', key: 1952, sig: 3309 } }
const U32 = 2 ** 32 - 1
const DOMAIN = /^[a-z0-9_.-]{1,32}$/
const ADDR = /^\/[\x21-\x7e]*$/
const MAX_TTL_MS = 300000
const MAX_SKEW_MS = 10000

class Dropped extends Error {}

function check (ok, why) {
  if (!ok) throw new Dropped(why)
}

function bytes (v, what, { size, max } = {}) {
  check(v instanceof Uint8Array, `${what}: not bin`)
  check(size === undefined || v.length === size, `${what}: ${v.length} bytes, not ${size}`)
  check(max === undefined || v.length <= max, `${what}: over ${max} bytes`)
  return v
}

function int (v, what, lo, hi) {
  check(Number.isSafeInteger(v) && v >= lo && v <= hi, `${what}: not an int in ${lo}..${hi}`)
  return v
}

function str (v, what, re) {
  check(typeof v === 'string' && re.test(v), `${what}: ${JSON.stringify(v)} breaks ${re}`)
  return v
}

function array (v, what, { length, max }) {
  check(Array.isArray(v), `${what}: not an array`)
  check(length === undefined || v.length === length, `${what}: ${v.length} elements, not ${length}`)
  check(max === undefined || v.length <= max, `${what}: over ${max} elements`)
  return v
}

const hex = (b) => Buffer.from(b).toString('hex')
const utf8 = (s) => new TextEncoder().encode(s)
const concat = (...parts) => Uint8Array.from(Buffer.concat(parts.map((p) => Buffer.from(p))))

function base58btc (b) {
  const alphabet = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz'
  let n = BigInt('0x' + (hex(b) || '0'))
  let out = ''
  while (n > 0n) {
    out = alphabet[Number(n % 58n)] + out
    n /= 58n
  }
  for (const byte of b) {
    if (byte !== 0) break
    out = '1' + out
  }
  return out
}

function verifySig (scheme, key, message, sig) {
  check(sig.length === SCHEMES[scheme].sig, `signature of ${sig.length} bytes for ${SCHEMES[scheme].name}`)
  if (scheme === 2) return ml_dsa65.verify(sig, message, key)
  const spki = concat(Buffer.from('302a300506032b6570032100', 'hex'), key)
  return cryptoVerify(null, message, createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' }), sig)
}

// WIRE.md, "Checks, in order".
function decodeAnnouncement (data, nowMs) {
  check(data.length <= MAX_BYTES, `${data.length} bytes, over ${MAX_BYTES}`)
  const f = array(decode(data), 'announcement', { length: 13 })
  check(Buffer.from(encode(f)).equals(Buffer.from(data)), 'not canonical msgpack')
  check(f[0] === 'swarm/announce' && f[1] === 1, `tag and version ${f[0]} ${f[1]}`)
  const peer = bytes(f[2], 'peer_id', { size: 38 })
  check(Buffer.from(peer.subarray(0, 6)).equals(ED25519_PEER_PREFIX), 'peer_id: not an Ed25519 identity peer id')
  const scheme = int(f[3], 'scheme', 1, 2)
  const accountKey = bytes(f[4], 'account_key', { size: SCHEMES[scheme].key })
  const bindAccountSig = bytes(f[5], 'binding_account_sig', { max: 4096 })
  const bindHostSig = bytes(f[6], 'binding_host_sig', { size: 64 })
  const addrs = array(f[7], 'addrs', { max: 8 }).map((a) => str(a, 'addr', ADDR))
  check(addrs.every((a) => a.length <= 256), 'addr: over 256 chars')
  const offers = array(f[8], 'offers', { max: 64 }).map((o) => {
    const g = array(o, 'offer', { length: 7 })
    return {
      expert_id: hex(bytes(g[0], 'expert_id', { size: 32 })),
      domain: str(g[1], 'domain', DOMAIN),
      kind: str(g[2], 'kind', /^(tensor|generator)$/),
      price_per_1k: int(g[3], 'price_per_1k', 0, U32),
      capacity: int(g[4], 'capacity', 1, U32),
      queue_depth: int(g[5], 'queue_depth', 0, U32),
      latency_us: int(g[6], 'latency_us', 0, U32)
    }
  })
  check(new Set(offers.map((o) => o.expert_id)).size === offers.length, 'offers one expert twice')
  const seq = int(f[9], 'seq', 0, Number.MAX_SAFE_INTEGER)
  const issued = int(f[10], 'issued_ms', 0, Number.MAX_SAFE_INTEGER)
  const expires = int(f[11], 'expires_ms', 0, Number.MAX_SAFE_INTEGER)
  const sig = array(f[12], 'signature', { length: 2 })
  check(sig[0] === scheme, 'signature scheme is not field 3')
  bytes(sig[1], 'signature bytes', { max: 4096 })

  check(issued < expires, 'expires_ms is not after issued_ms')
  check(expires - issued <= MAX_TTL_MS, 'lives longer than 5 minutes')
  check(issued <= nowMs + MAX_SKEW_MS, 'issued in the future')
  check(expires > nowMs, 'expired')

  const account = blake2b(concat([scheme], accountKey), { dkLen: 32 })
  const binding = concat(utf8(BIND_TAG), peer, account)
  check(verifySig(scheme, accountKey, binding, bindAccountSig), 'binding: bad account signature')
  check(verifySig(1, peer.subarray(6), binding, bindHostSig), 'binding: bad host signature')
  // The signed bytes straight from the input, as WIRE.md says: fixarray 13 -> 12, minus field 12.
  const tail = encode(f[12]).length
  const signed = concat(utf8(SIGN_TAG), [0x9c], data.subarray(1, data.length - tail))
  check(data[0] === 0x9d, 'not a fixarray of 13')
  check(verifySig(scheme, accountKey, signed, sig[1]), 'bad record signature')

  return {
    peer_id: base58btc(peer),
    scheme,
    account: hex(account),
    addrs,
    offers,
    seq,
    issued_ms: issued,
    expires_ms: expires,
    bytes: data.length
  }
}

async function main () {
  const [target, timeoutArg] = process.argv.slice(2)
  if (!target || !target.includes('/p2p/')) {
    throw new Error('usage: node read_announcement.mjs <multiaddr with /p2p/<peer id>> [timeout_ms]')
  }
  const timeoutMs = Number(timeoutArg ?? 20000)
  const addr = multiaddr(target)
  const node = await createLibp2p({
    addresses: { listen: [] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      ping: ping(),
      pubsub: gossipsub({ globalSignaturePolicy: 'StrictSign', heartbeatInterval: 500 })
    }
  })
  const timer = setTimeout(() => {
    process.stderr.write(`timed out after ${timeoutMs} ms\n`)
    process.exit(1)
  }, timeoutMs)
  try {
    const received = new Promise((resolve) => {
      node.services.pubsub.addEventListener('message', (evt) => {
        if (evt.detail.topic === TOPIC) resolve(evt.detail)
      })
    })
    node.services.pubsub.subscribe(TOPIC)
    const signal = AbortSignal.timeout(timeoutMs)
    const connection = await node.dial(addr, { signal })
    const rtt = await node.services.ping.ping(addr, { signal })
    const id = await node.services.identify.identify(connection, { signal })
    const msg = await received
    const announcement = decodeAnnouncement(msg.data, Date.now())
    const seen = {
      transport: { encryption: connection.encryption, multiplexer: connection.multiplexer },
      ping_ms: rtt,
      identify: {
        peer_id: id.peerId.toString(),
        agent: id.agentVersion ?? null,
        protocol_version: id.protocolVersion ?? null,
        protocols: [...id.protocols].sort()
      },
      pubsub: { topic: msg.topic, type: msg.type, from: msg.from?.toString() ?? null },
      announcement
    }
    process.stdout.write(JSON.stringify(seen) + '\n')
  } finally {
    clearTimeout(timer)
    await node.stop()
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`${err instanceof Dropped ? 'dropped the announcement: ' : ''}${err.stack ?? err}\n`)
    process.exit(1)
  }
)
