import { describe, expect, it } from 'vitest';
import { defaultRunLogDir } from '../../src/runlog/default-run-log-dir.js';
import { runLogFileName } from '../../src/runlog/run-log-file-name.js';

describe('runLogFileName', () => {
  it('keeps plain names as they are', () => {
    expect(runLogFileName('train-20240101-120000-ab12')).toBe('train-20240101-120000-ab12.ndjson');
    expect(runLogFileName('resnet50_lr0.1')).toBe('resnet50_lr0.1.ndjson');
  });

  it.each(['../../etc/passwd', 'a/b', 'a\\b', 'C:evil', '.hidden', '..', 'con', 'NUL.txt', 'Run', 'name.', 'x'.repeat(101), 'ünïcode', 'tab\there'])(
    'makes %j a single safe file name with a hash of the exact name',
    (run) => {
      const name = runLogFileName(run);
      expect(name).toMatch(/^[A-Za-z0-9_][A-Za-z0-9._-]{0,79}\+[0-9a-f]{8}\.ndjson$/);
      expect(runLogFileName(run)).toBe(name); // stable, so a restarted sidecar appends to the same file
    },
  );

  it('never gives two different names the same file, case-insensitively either', () => {
    const names = ['exp/1', 'exp:1', 'exp_1', 'Exp_1', 'EXP_1', 'exp 1', 'exp_1+0c6a2a0f'];
    const files = names.map((n) => runLogFileName(n).toLowerCase());
    expect(new Set(files).size).toBe(names.length);
  });

  it('refuses an empty run name', () => {
    expect(() => runLogFileName('')).toThrow(/a run name must not be empty/);
  });
});

describe('defaultRunLogDir', () => {
  const home = '/home/ada';
  it('prefers NOISESCOPE_LOG_DIR', () => {
    expect(defaultRunLogDir({ NOISESCOPE_LOG_DIR: '/data/logs', XDG_DATA_HOME: '/x' }, 'linux', home)).toBe('/data/logs');
  });
  it('uses an absolute XDG_DATA_HOME, else ~/.local/share on Linux', () => {
    expect(defaultRunLogDir({ XDG_DATA_HOME: '/xdg' }, 'linux', home)).toBe('/xdg/noisescope/runs');
    expect(defaultRunLogDir({ XDG_DATA_HOME: 'relative' }, 'linux', home)).toBe('/home/ada/.local/share/noisescope/runs');
    expect(defaultRunLogDir({}, 'linux', home)).toBe('/home/ada/.local/share/noisescope/runs');
  });
  it('uses the platform data directory on macOS and Windows', () => {
    expect(defaultRunLogDir({}, 'darwin', '/Users/ada')).toBe('/Users/ada/Library/Application Support/noisescope/runs');
    expect(defaultRunLogDir({ LOCALAPPDATA: 'C:\\Users\\ada\\AppData\\Local' }, 'win32', 'C:\\Users\\ada')).toBe(
      'C:\\Users\\ada\\AppData\\Local\\noisescope\\runs',
    );
    expect(defaultRunLogDir({}, 'win32', 'C:\\Users\\ada')).toBe('C:\\Users\\ada\\AppData\\Local\\noisescope\\runs');
  });
});
