import { homedir } from 'node:os';
import { posix, win32 } from 'node:path';

/**
 * Where run logs go by default: $NOISESCOPE_LOG_DIR; else the user's data
 * directory — $XDG_DATA_HOME/noisescope/runs (an absolute XDG_DATA_HOME only,
 * as the XDG spec says), else ~/.local/share/noisescope/runs on Linux,
 * ~/Library/Application Support/noisescope/runs on macOS, and
 * %LOCALAPPDATA%\noisescope\runs on Windows.
 */
export function defaultRunLogDir(
  env: NodeJS.ProcessEnv = process.env,
  platform: NodeJS.Platform = process.platform,
  home: string = homedir(),
): string {
  if (env.NOISESCOPE_LOG_DIR) return env.NOISESCOPE_LOG_DIR;
  if (platform === 'win32') {
    const local = env.LOCALAPPDATA && win32.isAbsolute(env.LOCALAPPDATA) ? env.LOCALAPPDATA : win32.join(home, 'AppData', 'Local');
    return win32.join(local, 'noisescope', 'runs');
  }
  if (env.XDG_DATA_HOME && posix.isAbsolute(env.XDG_DATA_HOME)) return posix.join(env.XDG_DATA_HOME, 'noisescope', 'runs');
  if (platform === 'darwin') return posix.join(home, 'Library', 'Application Support', 'noisescope', 'runs');
  return posix.join(home, '.local', 'share', 'noisescope', 'runs');
}
