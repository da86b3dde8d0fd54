/* nbd-config.h: settings for NBD endpoints, set once by cli/ before opening any. */
#ifndef MI_NBD_CONFIG_H
#define MI_NBD_CONFIG_H

struct nbd_config {
    const char *tls_psk_file;     /* --tls-psk-file */
    const char *tls_certificates; /* --tls-certificates (directory) */
    unsigned connections;         /* --connections: at most this many with multi-conn (0 = 4) */
};
void nbd_configure(const struct nbd_config *c);

/* How an NBD endpoint spreads one call of the engine over the wire: requests of at most
 * NBD_REQ_SIZE bytes (reads and writes), all in flight at once, round robin over the
 * connections (fewer bytes when the server's maximum block size is smaller).  A worker
 * thread of the engine therefore keeps len / NBD_REQ_SIZE requests in flight; more worker
 * threads (-j) add more.  1 MiB measured best against nbdkit with 1 ms of latency: 256 KiB
 * (nbdcopy's size) costs the server four times the per-request work for the same bytes. */
#define NBD_REQ_SIZE (1024u * 1024)

#endif
