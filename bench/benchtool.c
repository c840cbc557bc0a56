/* Timing helper for bench/run, in C so that interpreter overhead does not show in the figures.
 *
 *   benchtool mounttime PROBE TIMEOUT_S CMD [ARGS...]
 *       start CMD, poll stat(PROBE) every 100 us until it succeeds; prints
 *       "ms=<start of CMD to first successful stat> pid=<CMD's pid> exited=<0|1> rc=<exit status>".
 *       A CMD that returns once mounted (nemofs mount) is waited for; one that stays in the
 *       foreground is left running (exited=0), for the caller to stop. CMD's output goes to
 *       $BENCHTOOL_LOG (default /dev/null).
 *   benchtool seq RANGES BUDGET_S
 *       read every range of RANGES in order with 1 MiB read()s; prints "bytes=<n> secs=<t>".
 *       Stops early after BUDGET_S seconds (the caller reports a partial figure).
 *   benchtool rand RANGES COUNT SEED BUDGET_S
 *       COUNT preads of 4 KiB at random 4 KiB-aligned offsets of the ranges taken as one logical
 *       file; prints "n=<done> median_us= p99_us= mean_us=".
 *   benchtool folios RANGES
 *       how the page cache holds the bytes of RANGES (first 256 MiB): maps each range, touches every
 *       page (all should already be cached), and looks each page up in /proc/self/pagemap and
 *       /proc/kpageflags (root only); prints "pages=<n> folios=<n> kib_per_folio=<mean>". A folio
 *       is a head page with its tails, or a single small page. Why a warm FUSE read is slower than
 *       a warm read of the source file: the copy to user space goes folio by folio.
 *
 * RANGES is a file of lines "OFFSET<TAB>LENGTH<TAB>PATH": the bytes under test, in logical order.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
  char *path;
  uint64_t off, len, start; /* start: logical offset of this range */
  int fd;
} Range;

static Range *ranges;
static size_t nranges;
static uint64_t total;

static void load_ranges(const char *file) {
  FILE *f = fopen(file, "r");
  if (!f) {
    perror(file);
    exit(2);
  }
  size_t cap = 16;
  ranges = malloc(cap * sizeof *ranges);
  char *line = NULL;
  size_t n = 0;
  while (getline(&line, &n, f) > 0) {
    unsigned long long off, len;
    int used = 0;
    if (sscanf(line, "%llu\t%llu\t%n", &off, &len, &used) < 2 || used == 0) continue;
    char *p = line + used;
    p[strcspn(p, "\n")] = 0;
    if (nranges == cap) ranges = realloc(ranges, (cap *= 2) * sizeof *ranges);
    ranges[nranges] = (Range){strdup(p), off, len, total, -1};
    total += len;
    nranges++;
  }
  free(line);
  fclose(f);
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int cmd_mounttime(int argc, char **argv) {
  const char *probe = argv[0];
  double timeout = atof(argv[1]);
  double t0 = now();
  pid_t pid = fork();
  if (pid == 0) {
    /* A server that stays in the foreground must not hold our caller's output pipes open. */
    const char *log = getenv("BENCHTOOL_LOG");
    int fd = open(log ? log : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    execvp(argv[2], argv + 2);
    _exit(127);
  }
  struct stat st;
  int exited = 0, status = 0;
  const struct timespec pause = {0, 100000};
  for (;;) {
    if (stat(probe, &st) == 0) break;
    if (!exited && waitpid(pid, &status, WNOHANG) == pid) exited = 1;
    if (now() - t0 > timeout) {
      printf("ms=-1 pid=%d exited=%d rc=%d\n", pid, exited, exited ? WEXITSTATUS(status) : -1);
      return 1;
    }
    nanosleep(&pause, NULL);
  }
  double ms = (now() - t0) * 1e3;
  /* The daemonizing form returns right after the mount answers: collect its status. */
  if (!exited) {
    double t1 = now();
    while (now() - t1 < 0.05) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        exited = 1;
        break;
      }
      nanosleep(&pause, NULL);
    }
  }
  printf("ms=%.3f pid=%d exited=%d rc=%d\n", ms, pid, exited, exited ? WEXITSTATUS(status) : -1);
  return 0;
}

static int cmd_seq(int argc, char **argv) {
  load_ranges(argv[0]);
  double budget = atof(argv[1]);
  size_t bs = 1u << 20;
  char *buf = aligned_alloc(4096, bs);
  uint64_t done = 0;
  double t0 = now();
  for (size_t i = 0; i < nranges; ++i) {
    int fd = open(ranges[i].path, O_RDONLY);
    if (fd < 0) {
      fprintf(stderr, "benchtool: %s: %s\n", ranges[i].path, strerror(errno));
      return 1;
    }
    if (ranges[i].off && lseek(fd, (off_t)ranges[i].off, SEEK_SET) < 0) return 1;
    uint64_t left = ranges[i].len;
    while (left) {
      ssize_t n = read(fd, buf, left < bs ? left : bs);
      if (n <= 0) {
        fprintf(stderr, "benchtool: %s: short read\n", ranges[i].path);
        return 1;
      }
      left -= (uint64_t)n;
      done += (uint64_t)n;
      if (now() - t0 > budget) break;
    }
    close(fd);
    if (now() - t0 > budget) break;
  }
  printf("bytes=%llu secs=%.6f\n", (unsigned long long)done, now() - t0);
  return 0;
}

static int cmd_rand(int argc, char **argv) {
  load_ranges(argv[0]);
  long count = atol(argv[1]);
  srand48(atol(argv[2]));
  double budget = atof(argv[3]);
  struct rlimit rl = {nranges + 64, nranges + 64};
  setrlimit(RLIMIT_NOFILE, &rl);
  for (size_t i = 0; i < nranges; ++i) {
    ranges[i].fd = open(ranges[i].path, O_RDONLY);
    if (ranges[i].fd < 0) {
      fprintf(stderr, "benchtool: %s: %s\n", ranges[i].path, strerror(errno));
      return 1;
    }
  }
  double *lat = malloc(sizeof(double) * (size_t)count);
  char *buf = aligned_alloc(4096, 4096);
  uint64_t pages = total / 4096;
  if (!pages) return 1;
  long n = 0;
  double t0 = now();
  for (; n < count && now() - t0 < budget; ++n) {
    uint64_t logical = ((uint64_t)(drand48() * (double)pages)) * 4096;
    size_t lo = 0, hi = nranges;
    while (hi - lo > 1) {
      size_t mid = (lo + hi) / 2;
      if (ranges[mid].start <= logical) lo = mid;
      else hi = mid;
    }
    Range *r = &ranges[lo];
    uint64_t in = logical - r->start;
    size_t len = r->len - in < 4096 ? (size_t)(r->len - in) : 4096;
    double a = now();
    if (pread(r->fd, buf, len, (off_t)(r->off + in)) != (ssize_t)len) {
      fprintf(stderr, "benchtool: %s: short pread\n", r->path);
      return 1;
    }
    lat[n] = (now() - a) * 1e6;
  }
  double sum = 0;
  for (long i = 0; i < n; ++i) sum += lat[i];
  qsort(lat, (size_t)n, sizeof *lat, cmp_d);
  printf("n=%ld median_us=%.3f p99_us=%.3f mean_us=%.3f\n", n, n ? lat[n / 2] : -1, n ? lat[(n * 99) / 100] : -1,
         n ? sum / n : -1);
  return 0;
}

static int cmd_folios(int argc, char **argv) {
  load_ranges(argv[0]);
  int pm = open("/proc/self/pagemap", O_RDONLY), kf = open("/proc/kpageflags", O_RDONLY);
  if (pm < 0 || kf < 0) {
    perror("/proc/self/pagemap or /proc/kpageflags (needs root)");
    return 2;
  }
  const uint64_t cap = 256ull << 20, page = 4096;
  uint64_t pages = 0, folios = 0, budget = cap;
  for (size_t r = 0; r < nranges && budget; r++) {
    uint64_t lo = ranges[r].off / page * page, hi = ranges[r].off + ranges[r].len;
    if (hi - lo > budget) hi = lo + budget;
    int fd = open(ranges[r].path, O_RDONLY);
    if (fd < 0) {
      perror(ranges[r].path);
      return 2;
    }
    volatile unsigned char *m = mmap(NULL, hi - lo, PROT_READ, MAP_SHARED, fd, (off_t)lo);
    if (m == MAP_FAILED) {
      perror("mmap");
      return 2;
    }
    unsigned sink = 0;
    for (uint64_t i = 0; i < hi - lo; i += page) sink += m[i];
    (void)sink;
    for (uint64_t i = 0; i < hi - lo; i += page) {
      uint64_t e = 0, f = 0;
      if (pread(pm, &e, 8, (off_t)(((uintptr_t)m + i) / page * 8)) != 8 || !(e >> 63)) continue;
      if (pread(kf, &f, 8, (off_t)((e & ((1ull << 55) - 1)) * 8)) != 8) continue;
      pages++;
      if (!(f & (1ull << 16))) folios++; /* KPF_COMPOUND_TAIL: part of the folio counted at its head */
    }
    munmap((void *)m, hi - lo);
    close(fd);
    budget -= hi - lo;
  }
  printf("pages=%llu folios=%llu kib_per_folio=%.1f\n", (unsigned long long)pages, (unsigned long long)folios,
         folios ? pages * 4.0 / folios : 0.0);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 5 && strcmp(argv[1], "mounttime") == 0) return cmd_mounttime(argc - 2, argv + 2);
  if (argc == 4 && strcmp(argv[1], "seq") == 0) return cmd_seq(argc - 2, argv + 2);
  if (argc == 6 && strcmp(argv[1], "rand") == 0) return cmd_rand(argc - 2, argv + 2);
  if (argc == 3 && strcmp(argv[1], "folios") == 0) return cmd_folios(argc - 2, argv + 2);
  fprintf(stderr, "usage: benchtool mounttime PROBE TIMEOUT_S CMD... | seq RANGES BUDGET_S | "
                  "rand RANGES COUNT SEED BUDGET_S | folios RANGES\n");
  return 1;
}
