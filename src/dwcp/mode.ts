/** The three operating modes of DWCP, chosen from measured link properties. */
export type NetworkMode = 'datacenter' | 'internet' | 'hybrid';

export const NETWORK_MODES: readonly NetworkMode[] = ['datacenter', 'internet', 'hybrid'];
