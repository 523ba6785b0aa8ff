// A client process of `noisescope bench ranks`: attaches its share of the ranks,
// says 'attached', sends every step on the schedule it is given, says 'done'.
import { attachRanks, type WorkerTask } from './ranks-load.js';

process.once('message', (first: { type: 'task'; task: WorkerTask }) => {
  const ranks = attachRanks(first.task);
  process.send!({ type: 'attached' });
  process.once('message', async (go: { type: 'go'; startAt: number }) => {
    const result = await ranks.run(go.startAt);
    process.send!({ type: 'done', ...result }, () => {
      ranks.close();
      process.disconnect();
    });
  });
});
