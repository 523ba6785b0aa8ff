// How a run's gradients travel, in a few words, for serve's run line, replay and the dashboard header.
import type { RunInfo } from '../src/types.js';

const DTYPE_NAMES = { DTYPE_F32: 'fp32', DTYPE_F16: 'fp16', DTYPE_BF16: 'bf16' } as const;

/**
 * "norms", "dense", or "sketch m=4096" (with "m=1024–4096" when layers differ, the wire dtype when not
 * fp32, and, unless `brief`, how many layers fit in m and so travel exactly).
 */
export function modeSummary(info: Pick<RunInfo, 'mode' | 'sketch' | 'layers'>, { brief = false }: { readonly brief?: boolean } = {}): string {
  if (info.mode !== 'sketch' || !info.sketch) return info.mode;
  const { sizes, dtype } = info.sketch;
  const sketched = sizes.filter((m, i) => m < (info.layers[i]?.numel ?? m + 1));
  const exact = sizes.length - sketched.length;
  const low = Math.min(...sketched);
  const high = Math.max(...sketched);
  const m = sketched.length === 0 ? '' : low === high ? ` m=${low}` : ` m=${low}–${high}`;
  const wire = dtype === 'DTYPE_F32' ? '' : ` ${DTYPE_NAMES[dtype]}`;
  const exactly = sketched.length === 0 ? ' (every layer exact)' : exact > 0 && !brief ? ` (${exact} of ${sizes.length} layers exact)` : '';
  return `sketch${m}${wire}${exactly}`;
}
