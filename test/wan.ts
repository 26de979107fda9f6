// Emulated WAN links for tap tests: `withWanLink` brings a link up, runs the
// body, and registers its removal with the test, so namespaces and the
// forwarder go whether the body passes, fails or throws. `wanSkip` is the
// reason to skip (not root, no TUN...) or false.
import { wanUp, wanDown, wanUnavailable } from '../src/sys/wan.js';
import type { WanLink, WanOptions } from '../src/sys/wan.js';

export const wanSkip: string | false = wanUnavailable() ?? false;

export async function withWanLink(
  t: { teardown(fn: () => unknown): void },
  name: string,
  options: WanOptions,
  fn: (link: WanLink) => Promise<void>,
): Promise<void> {
  t.teardown(() => wanDown(name));
  const link = await wanUp(options, name);
  try {
    await fn(link);
  } finally {
    await wanDown(name);
  }
}
