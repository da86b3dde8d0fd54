/* nbd-config.h: settings for NBD endpoints, set once by cli/ before opening any. */
#ifndef MI_NBD_CONFIG_H
#define MI_NBD_CONFIG_H

struct nbd_config {
    const char *tls_psk_file;     /* --tls-psk-file */
    const char *tls_certificates; /* --tls-certificates (directory) */
    unsigned connections;         /* --connections: at most this many with multi-conn */
};
void nbd_configure(const struct nbd_config *c);

#endif
