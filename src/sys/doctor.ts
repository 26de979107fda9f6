// `novacron doctor`: what the data plane will use on this host.
import { cpus } from 'node:os';
import { readFile, readdir } from 'node:fs/promises';
import { native, type NativeCpuFeatures, type NativeRdmaPort } from '../native.js';

export interface DoctorReport {
  /** SIMD path the page codec runs, and every path this CPU supports. */
  simd: { selected: string; supported: string[] };
  cpu: { model: string; logicalCores: number; features: NativeCpuFeatures };
  pageSize: { system: number; hdeDefault: number };
  /** TCP congestion control algorithms from /proc/sys/net/ipv4. */
  congestion: { available: string[]; allowed: string[]; default: string | null; bbr: boolean; cubic: boolean };
  /** libibverbs (loaded at run time) and RDMA devices. */
  rdma: { library: string | null; devices: string[]; ports: NativeRdmaPort[]; sysfsDevices: string[]; error?: string };
  io_uring: { available: boolean; features?: number; disabledSysctl: number | null; error?: string };
}

async function readWords(path: string): Promise<string[] | null> {
  try {
    return (await readFile(path, 'utf8')).trim().split(/\s+/).filter(Boolean);
  } catch {
    return null;
  }
}

export async function doctor(): Promise<DoctorReport> {
  const paths = native.simdPaths();
  const cpuList = cpus();
  const available = (await readWords('/proc/sys/net/ipv4/tcp_available_congestion_control')) ?? [];
  const allowed = (await readWords('/proc/sys/net/ipv4/tcp_allowed_congestion_control')) ?? [];
  const def = (await readWords('/proc/sys/net/ipv4/tcp_congestion_control'))?.[0] ?? null;
  const rdma = native.probeRdma();
  let sysfsDevices: string[] = [];
  try {
    sysfsDevices = await readdir('/sys/class/infiniband');
  } catch {
    // no RDMA subsystem
  }
  const uring = native.probeIoUring();
  const disabled = (await readWords('/proc/sys/kernel/io_uring_disabled'))?.[0];
  return {
    simd: { selected: paths.selected, supported: paths.supported },
    cpu: { model: cpuList[0]?.model ?? 'unknown', logicalCores: cpuList.length, features: native.cpuFeatures() },
    pageSize: { system: native.systemPageSize(), hdeDefault: 4096 },
    congestion: { available, allowed, default: def, bbr: available.includes('bbr'), cubic: available.includes('cubic') },
    rdma: {
      library: rdma.library,
      devices: rdma.devices,
      ports: rdma.ports,
      sysfsDevices,
      ...(rdma.error !== undefined ? { error: rdma.error } : {}),
    },
    io_uring: {
      available: uring.available,
      ...(uring.features !== undefined ? { features: uring.features } : {}),
      disabledSysctl: disabled === undefined ? null : Number(disabled),
      ...(uring.error !== undefined ? { error: uring.error } : {}),
    },
  };
}

export function formatDoctor(r: DoctorReport): string {
  const f = r.cpu.features;
  const flags = Object.entries(f)
    .filter(([k, v]) => v === true && k !== 'crc32c')
    .map(([k]) => k)
    .join(' ');
  const yes = (b: boolean): string => (b ? 'yes' : 'no');
  return [
    `cpu          ${r.cpu.model} (${r.cpu.logicalCores} logical cores)`,
    `cpu flags    ${flags}; crc32c: ${f.crc32c}`,
    `simd         ${r.simd.selected} (supported: ${r.simd.supported.join(', ')})`,
    `page size    system ${r.pageSize.system} B, HDE default ${r.pageSize.hdeDefault} B`,
    `congestion   available: ${r.congestion.available.join(', ') || 'unknown'}; default ${r.congestion.default ?? 'unknown'}; bbr ${yes(r.congestion.bbr)}, cubic ${yes(r.congestion.cubic)}`,
    `rdma         libibverbs: ${r.rdma.library ?? 'not found'}; devices: ${r.rdma.devices.join(', ') || 'none'}` +
      (r.rdma.devices.length === 0 ? ' (multi-stream TCP will be used)' : '') +
      r.rdma.ports.map((p) => `\n             ${p.device} port ${p.port}: ${p.state}, ${p.linkLayer}, MTU ${p.mtu}, GID ${p.gid} (index ${p.gidIndex})`).join(''),
    `io_uring     ${r.io_uring.available ? 'available' : `unavailable (${r.io_uring.error ?? 'unknown'})`}`,
  ].join('\n');
}
