/* The FUSE floor for the benchmark: a low-level libfuse3 server whose root holds one file, "data",
 * whose bytes are [OFFSET, OFFSET+LENGTH) of SOURCE. It does the least any FUSE filesystem must:
 * lookup, getattr, open (keep_cache), and reads answered by splicing from SOURCE. Same init
 * settings as nemofs (252-page requests, 4 MiB kernel read-ahead where sysfs allows, splice, async
 * reads, multi-threaded loop: fs/fuse/fuse_server.cpp's op_init says why), so the difference
 * between the two is what nemofs adds on top of the floor. It has no read-ahead of its own.
 *
 *   minimal_range_server SOURCE OFFSET LENGTH MOUNTPOINT     (stays in the foreground; fusermount3 -u to stop)
 */
#define FUSE_USE_VERSION 314
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int src_fd;
static off_t base_off, length;
static char mountpoint[4096];

/* The mount's backing device read-ahead to 4 MiB, as nemofs does (root only; quietly skipped). */
static void raise_readahead(void) {
  FILE *f = fopen("/proc/self/mountinfo", "re");
  if (!f) return;
  char line[8192], dev[64] = "", majmin[64], mp[4096];
  while (fgets(line, sizeof line, f)) {
    const char *sep = strstr(line, " - ");
    if (sscanf(line, "%*s %*s %63s %*s %4095s", majmin, mp) == 2 && sep && strncmp(sep + 3, "fuse.minimal ", 13) == 0 &&
        strcmp(mp, mountpoint) == 0)
      strcpy(dev, majmin);
  }
  fclose(f);
  if (!dev[0]) return;
  char path[256];
  snprintf(path, sizeof path, "/sys/class/bdi/%s/read_ahead_kb", dev);
  FILE *ra = fopen(path, "we");
  if (ra) {
    fputs("4096\n", ra);
    fclose(ra);
  }
}

static void fill(fuse_ino_t ino, struct stat *st) {
  memset(st, 0, sizeof *st);
  st->st_ino = ino;
  if (ino == 1) {
    st->st_mode = S_IFDIR | 0555;
    st->st_nlink = 2;
  } else {
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_size = length;
  }
}

static void op_init(void *u, struct fuse_conn_info *c) {
  if (c->capable & FUSE_CAP_SPLICE_WRITE) c->want |= FUSE_CAP_SPLICE_WRITE;
  if (c->capable & FUSE_CAP_SPLICE_MOVE) c->want |= FUSE_CAP_SPLICE_MOVE;
  if (c->capable & FUSE_CAP_ASYNC_READ) c->want |= FUSE_CAP_ASYNC_READ;
  c->max_write = 252 * 4096;
  c->max_readahead = 4u << 20;
  raise_readahead();
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  if (parent != 1 || strcmp(name, "data") != 0) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct fuse_entry_param e = {.ino = 2, .generation = 1, .attr_timeout = 86400, .entry_timeout = 86400};
  fill(2, &e.attr);
  fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  struct stat st;
  fill(ino, &st);
  fuse_reply_attr(req, &st, 86400);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  if (ino != 2) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  fi->keep_cache = 1;
  fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  if (off >= length) size = 0;
  else if ((off_t)size > length - off) size = (size_t)(length - off);
  struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
  bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
  bv.buf[0].fd = src_fd;
  bv.buf[0].pos = base_off + off;
  fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s SOURCE OFFSET LENGTH MOUNTPOINT\n", argv[0]);
    return 1;
  }
  src_fd = open(argv[1], O_RDONLY);
  if (src_fd < 0) {
    perror(argv[1]);
    return 1;
  }
  if (!realpath(argv[4], mountpoint)) {
    perror(argv[4]);
    return 1;
  }
  base_off = strtoll(argv[2], NULL, 10);
  length = strtoll(argv[3], NULL, 10);
  char *fargv[] = {argv[0], "-o", "ro,fsname=minimal_range_server,subtype=minimal", NULL};
  struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
  struct fuse_lowlevel_ops ops = {
      .init = op_init, .lookup = op_lookup, .getattr = op_getattr, .open = op_open, .read = op_read};
  struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
  if (!se || fuse_set_signal_handlers(se) != 0 || fuse_session_mount(se, argv[4]) != 0) return 1;
  struct fuse_loop_config *cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(cfg, 1);
  int rc = fuse_session_loop_mt(se, cfg);
  fuse_loop_cfg_destroy(cfg);
  fuse_session_unmount(se);
  fuse_remove_signal_handlers(se);
  fuse_session_destroy(se);
  return rc ? 1 : 0;
}
