// Public entry `noisescope/tui`: the Ink dashboard over any DashboardSources
// (a sidecar from `noisescope`, a remote one from watchSidecar, or your own Observables).
export { renderDashboard } from './render-dashboard.js';
export type { DashboardOptions } from './render-dashboard.js';
export { Dashboard, dashboardModel$ } from './dashboard.js';
export type { DashboardProps, Focus } from './dashboard.js';
export type { ConnectionState, DashboardSources } from './sources.js';
