// Sockets for cluster traffic (Raft, gossip, the Raft client port): plain
// TCP, or mutual TLS when given a key, a certificate and the CA that signed
// every member's certificate. Members are addressed by IP, so a peer is
// trusted for holding a certificate from the cluster's CA, not for a host
// name.
import { connect as netConnect, createServer as netServer, type Server, type Socket } from 'node:net';
import { connect as tlsConnect, createServer as tlsServer } from 'node:tls';

export interface ClusterTls {
  key: string | Buffer;
  cert: string | Buffer;
  /** The CA that signed every member's (and client's) certificate. */
  ca: string | Buffer;
}

/** A server whose handler gets only sockets that completed the handshake (with TLS: a verified peer certificate). */
export function clusterServer(tls: ClusterTls | undefined, onSocket: (s: Socket) => void): Server {
  if (!tls) return netServer(onSocket);
  const server = tlsServer({ key: tls.key, cert: tls.cert, ca: tls.ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' }, onSocket);
  // A peer without a certificate from the CA fails the handshake; that is not the server's error.
  server.on('tlsClientError', () => undefined);
  return server;
}

/** Dials a member; `onReady` runs once the connection (and TLS handshake) is up. */
export function clusterConnect(addr: { host: string; port: number }, tls: ClusterTls | undefined, onReady?: () => void): Socket {
  if (!tls) {
    const s = netConnect(addr.port, addr.host);
    if (onReady) s.once('connect', onReady);
    return s;
  }
  const s = tlsConnect({ host: addr.host, port: addr.port, key: tls.key, cert: tls.cert, ca: tls.ca, rejectUnauthorized: true, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined });
  if (onReady) s.once('secureConnect', onReady);
  return s;
}
