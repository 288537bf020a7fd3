// js-libp2p (it-queue, under mortice and the peer store) calls Promise.withResolvers, which
// Node.js has only from 22 on, though no engines field says so; CI runs Node.js 20. This is
// the standard function (ES2024), defined only where it is missing. Imported first.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => {
      resolve = res
      reject = rej
    })
    return { promise, resolve, reject }
  }
}
