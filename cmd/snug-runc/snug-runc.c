/*
 * snug-runc: snug's runc wrapper, for `ctr run --runc-binary` and a
 * containerd runtime's BinaryName (CRI included).
 *
 * containerd's shim runs it for every runc call of a container (create,
 * start, kill, delete, ...), so it is small C, not Go: a Go process costs
 * this host about 1.3 ms to start, more under load, and a shell script
 * 0.6 ms (bench/results/hook-cost.txt).
 *
 *   - Every call but create and run: exec the real runc at once.
 *   - create and run: one call to the snug daemon's control socket,
 *     POST /v1/bundles/create with the container id and the bundle. The
 *     daemon adds snug's poststop hook to the bundle's config.json and
 *     does the createRuntime hook's work (hooks.PrepareBundle). Then exec
 *     runc.
 *   - The poststop hook is this binary too: `snug-runc hook poststop
 *     --control SOCKET` hands the OCI state on stdin to the daemon as it is
 *     (POST /v1/hooks/poststop), and exits.
 *   - When that call cannot be made here (no daemon at the socket, a daemon
 *     running another policy, one that does not see the bundle, an older
 *     one, a path JSON cannot carry), exec `snug-hook wrap` (next to this
 *     binary) with the same
 *     arguments: the same work in Go (hooks.Wrap), which reads the policy
 *     file and reports what fails.
 *   - Anything else that fails is a warning on stderr, and runc runs all
 *     the same: snug never stops a container from starting.
 *
 * Environment: SNUG_RUNC, the real runc (default: runc on PATH, skipping
 * this binary); SNUG_CONTROL, the daemon's control socket (default
 * /run/snug/control.sock, checked to run the policy in SNUG_CONFIG or
 * /etc/snug/config.toml); SNUG_CONFIG, the policy file snug's hooks read.
 *
 * The argument parsing follows hooks.ParseRuncArgs; TestRuncWrapperParses
 * checks the two agree, and that the defaults below are config's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define NAME "snug-runc"
#define DEFAULT_CONTROL "/run/snug/control.sock"
#define DEFAULT_POLICY "/etc/snug/config.toml"
#define PATH_BUNDLE_CREATE "/v1/bundles/create"
#define PATH_POSTSTOP "/v1/hooks/poststop"
#define TIMEOUT_SECONDS 5 /* hooks.Timeout */

extern char **environ;

/* A growing string; on overflow it is marked bad, never written past. */
struct buf {
	char data[16384];
	size_t len;
	int bad;
};

static void put(struct buf *b, const char *s, size_t n)
{
	if (b->bad || n >= sizeof(b->data) - b->len) {
		b->bad = 1;
		return;
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = 0;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/*
 * put_json_string writes s as a JSON string. Bytes above 0x7f are refused
 * (the buffer is marked bad): they need not be UTF-8, which JSON must be,
 * and the Go path handles them.
 */
static void put_json_string(struct buf *b, const char *s)
{
	char esc[8];
	put(b, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c >= 0x80) {
			b->bad = 1;
			return;
		}
		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			put(b, esc, 2);
		} else if (c < 0x20) {
			snprintf(esc, sizeof esc, "\\u%04x", c);
			put(b, esc, 6);
		} else {
			put(b, (const char *)&c, 1);
		}
	}
	put(b, "\"", 1);
}

/* other_runc tells whether path is an executable file that is not this one. */
static int other_runc(const char *path)
{
	struct stat sp, self;
	if (stat(path, &sp) != 0 || !S_ISREG(sp.st_mode) || access(path, X_OK) != 0)
		return 0;
	return stat("/proc/self/exe", &self) != 0 || sp.st_dev != self.st_dev || sp.st_ino != self.st_ino;
}

/*
 * exec_runc execs the real runc with argv[1..]: SNUG_RUNC, or the first
 * runc on PATH that is not this binary (snug-runc installed as runc must
 * not run itself).
 */
static void exec_runc(char **argv)
{
	const char *runc = getenv("SNUG_RUNC");
	const char *path = getenv("PATH");
	char cand[PATH_MAX];
	if (runc && *runc) {
		argv[0] = (char *)runc;
		execvp(runc, argv);
		fprintf(stderr, NAME ": exec %s: %s\n", runc, strerror(errno));
		exit(127);
	}
	if (!path || !*path)
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	while (*path) {
		const char *end = strchrnul(path, ':');
		int n = (int)(end - path);
		if (n == 0)
			n = snprintf(cand, sizeof cand, "./runc");
		else
			n = snprintf(cand, sizeof cand, "%.*s/runc", n, path);
		path = *end ? end + 1 : end;
		if (n < 0 || (size_t)n >= sizeof cand || !other_runc(cand))
			continue;
		argv[0] = cand;
		execv(cand, argv);
		fprintf(stderr, NAME ": exec %s: %s\n", cand, strerror(errno));
		exit(127);
	}
	fprintf(stderr, NAME ": runc not found on PATH (set SNUG_RUNC)\n");
	exit(127);
}

/* exec_go hands the call to `snug-hook wrap ARGS...`. */
static void exec_go(const char *hook, int argc, char **argv)
{
	char **args = calloc((size_t)argc + 2, sizeof *args);
	if (args) {
		args[0] = "snug-hook";
		args[1] = "wrap";
		memcpy(args + 2, argv + 1, (size_t)(argc - 1) * sizeof *args);
		execv(hook, args);
	}
	fprintf(stderr, NAME ": exec %s: %s; runc runs without snug's hooks\n", hook, strerror(errno));
	exec_runc(argv);
}

/* What a runc command line says, as hooks.RuncCall. */
struct call {
	const char *command; /* NULL for none */
	const char *bundle;  /* create and run only */
	const char *id;
};

static int is(const char *a, const char *b) { return strcmp(a, b) == 0; }

/* parse reads runc's arguments as hooks.ParseRuncArgs does. */
static struct call parse(int argc, char **argv)
{
	struct call c = {0};
	int i = 1, j;
	for (; i < argc; i++) {
		const char *a = argv[i];
		if (a[0] != '-') {
			c.command = a;
			break;
		}
		if (is(a, "--root") || is(a, "--log") || is(a, "--log-format") || is(a, "--criu") || is(a, "--rootless"))
			i++;
	}
	if (!c.command || !(is(c.command, "create") || is(c.command, "run")))
		return c;
	c.bundle = ".";
	for (j = i + 1; j < argc; j++) {
		const char *a = argv[j];
		if (is(a, "--")) {
			if (j + 1 < argc)
				c.id = argv[j + 1];
			break;
		} else if (is(a, "--bundle") || is(a, "-b") || is(a, "-bundle")) {
			if (j + 1 < argc)
				c.bundle = argv[j + 1];
			j++;
		} else if (strncmp(a, "--bundle=", 9) == 0) {
			c.bundle = a + 9;
		} else if (strncmp(a, "-b=", 3) == 0) {
			c.bundle = a + 3;
		} else if (is(a, "--console-socket") || is(a, "--pid-file") || is(a, "--preserve-fds") || is(a, "--pidfd-socket")) {
			j++;
		} else if (a[0] == '-') {
		} else {
			c.id = a;
			break;
		}
	}
	if (!*c.bundle)
		c.bundle = "."; /* runc takes an empty --bundle as the working directory */
	return c;
}

/* write_all writes n bytes of p to fd; -1 on error (errno set). */
static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

enum { CANNOT_CONNECT = -1, NO_ANSWER = -2 };

/*
 * post sends body to path on the control socket, as HTTP/1.0 (the daemon
 * answers, then closes), bounded by TIMEOUT_SECONDS each way. It returns
 * the answer's status, with the start of the answer in resp, or
 * CANNOT_CONNECT or NO_ANSWER (*why says what failed).
 */
static int post(const char *control, const char *path, const char *body, size_t len, struct buf *resp, const char **why)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct timeval tv = {.tv_sec = TIMEOUT_SECONDS};
	char head[256];
	int fd, code, n;

	*why = "";
	if (strlen(control) >= sizeof sa.sun_path) {
		*why = "socket path too long";
		return CANNOT_CONNECT;
	}
	strcpy(sa.sun_path, control);
	n = snprintf(head, sizeof head, "POST %s HTTP/1.0\r\nHost: snug\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n", path, len);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*why = strerror(errno);
		return CANNOT_CONNECT;
	}
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
		*why = strerror(errno);
		close(fd);
		return CANNOT_CONNECT;
	}
	if (write_all(fd, head, (size_t)n) != 0 || write_all(fd, body, len) != 0) {
		*why = strerror(errno);
		close(fd);
		return NO_ANSWER;
	}
	for (;;) {
		ssize_t r = read(fd, resp->data + resp->len, sizeof resp->data - 1 - resp->len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			*why = errno == EAGAIN ? "no answer in time" : strerror(errno);
			close(fd);
			return NO_ANSWER;
		}
		if (r == 0)
			break;
		resp->len += (size_t)r;
		resp->data[resp->len] = 0;
		if (resp->len == sizeof resp->data - 1)
			break; /* the status line is what matters */
	}
	close(fd);
	if (sscanf(resp->data, "HTTP/1.%*d %d", &code) != 1) {
		*why = "not an HTTP answer";
		return NO_ANSWER;
	}
	return code;
}

/* message is the answer's body, up to its first newline. */
static const char *message(const struct buf *resp, int *len)
{
	const char *msg = strstr(resp->data, "\r\n\r\n");
	msg = msg ? msg + 4 : "";
	*len = (int)strcspn(msg, "\n");
	return msg;
}

enum outcome { DONE, HAND_OVER, WARNED };

/*
 * bundle_create makes the daemon's bundle create call: DONE when the
 * daemon did the work, HAND_OVER when the Go path should do it, WARNED
 * when it failed in a way the Go path would repeat (a warning is printed).
 */
static enum outcome bundle_create(const struct call *c, const char *self)
{
	const char *control = getenv("SNUG_CONTROL");
	const char *config = getenv("SNUG_CONFIG");
	const char *policy = NULL, *why;
	char dir[PATH_MAX];
	struct buf body = {0}, resp = {0};
	int code, n;

	if (config && !*config)
		config = NULL;
	if (config && config[0] != '/')
		return HAND_OVER; /* the daemon's working directory is not ours */
	if (!control || !*control) {
		control = DEFAULT_CONTROL;
		policy = config ? config : DEFAULT_POLICY;
	}
	if (control[0] != '/')
		return HAND_OVER;

	puts_(&body, "{\"id\":");
	put_json_string(&body, c->id ? c->id : "");
	puts_(&body, ",\"bundle\":");
	if (c->bundle[0] == '/') {
		put_json_string(&body, c->bundle);
	} else {
		if (!getcwd(dir, sizeof dir))
			return HAND_OVER;
		if (!is(c->bundle, ".")) {
			size_t len = strlen(dir);
			if (snprintf(dir + len, sizeof dir - len, "/%s", c->bundle) >= (int)(sizeof dir - len))
				return HAND_OVER;
		}
		put_json_string(&body, dir);
	}
	puts_(&body, ",\"wrapper\":");
	put_json_string(&body, self);
	puts_(&body, ",\"control\":");
	put_json_string(&body, control);
	if (policy) {
		puts_(&body, ",\"policy\":");
		put_json_string(&body, policy);
	}
	puts_(&body, "}");
	if (body.bad)
		return HAND_OVER;

	code = post(control, PATH_BUNDLE_CREATE, body.data, body.len, &resp, &why);
	switch (code) {
	case CANNOT_CONNECT: /* snug-hook says whether the daemon is down */
	case 404: /* a bundle the daemon cannot see, or a daemon without this call */
	case 405:
	case 409: /* a daemon running another policy */
		return HAND_OVER;
	case NO_ANSWER:
		fprintf(stderr, NAME ": %s %s: warning: snug daemon at %s: %s (the container goes on without it)\n", c->command, c->id ? c->id : "", control, why);
		return WARNED;
	case 200:
		return DONE;
	default: {
		const char *msg = message(&resp, &n);
		fprintf(stderr, NAME ": %s %s: warning: snug daemon: %d %.*s (the container goes on without it)\n", c->command, c->id ? c->id : "", code, n, msg);
		return WARNED;
	}
	}
}

/*
 * poststop_hook is `snug-runc hook poststop --control SOCKET`, the
 * poststop hook the daemon puts in config.json: it hands the OCI state on
 * stdin, unparsed, to the daemon, which schedules the reclaim and answers
 * at once. Like snug-hook: a state the daemon refuses exits 2 with its
 * message; a daemon that is down or fails is a warning, exit 0 (the exit
 * event still reaches the daemon through containerd).
 */
static int poststop_hook(int argc, char **argv)
{
	const size_t max = (1 << 20) + 1; /* hooks.ReadState reads at most 1 MiB */
	struct buf resp = {0};
	const char *why, *msg;
	char *state;
	size_t len = 0;
	int code, n;

	if (argc != 5 || !is(argv[2], "poststop") || !is(argv[3], "--control") || argv[4][0] != '/') {
		fprintf(stderr, "usage: " NAME " hook poststop --control SOCKET < state.json\n");
		return 2;
	}
	state = malloc(max);
	if (!state) {
		fprintf(stderr, NAME " hook poststop: warning: %s\n", strerror(errno));
		return 0;
	}
	for (;;) {
		ssize_t r = read(0, state + len, max - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			fprintf(stderr, NAME " hook poststop: reading the state: %s\n", strerror(errno));
			return 2;
		}
		if (r == 0 || (len += (size_t)r) == max)
			break;
	}
	code = post(argv[4], PATH_POSTSTOP, state, len, &resp, &why);
	free(state);
	msg = message(&resp, &n);
	switch (code) {
	case 200:
		return 0;
	case 400:
		fprintf(stderr, NAME " hook poststop: %.*s\n", n, msg);
		return 2;
	case CANNOT_CONNECT:
	case NO_ANSWER:
		fprintf(stderr, NAME " hook poststop: warning: snug daemon at %s: %s (the container goes on without it)\n", argv[4], why);
		return 0;
	default:
		fprintf(stderr, NAME " hook poststop: warning: snug daemon: %d %.*s (the container goes on without it)\n", code, n, msg);
		return 0;
	}
}

int main(int argc, char **argv)
{
	struct call c;
	char self[PATH_MAX], hook[PATH_MAX];
	ssize_t n;
	char *slash;

	if (argc > 1 && is(argv[1], "hook"))
		return poststop_hook(argc, argv);
	c = parse(argc, argv);
	if (!c.bundle)
		exec_runc(argv);
	n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n > 0)
		self[n] = 0;
	if (n <= 0 || !(slash = strrchr(self, '/'))) {
		fprintf(stderr, NAME ": cannot find itself (/proc/self/exe); runc runs without snug's hooks\n");
		exec_runc(argv);
	}
	if (snprintf(hook, sizeof hook, "%.*s/snug-hook", (int)(slash - self), self) >= (int)sizeof hook || access(hook, X_OK) != 0) {
		fprintf(stderr, NAME ": %s: %s; runc runs without snug's hooks\n", hook, strerror(errno));
		exec_runc(argv);
	}
	if (bundle_create(&c, self) == HAND_OVER)
		exec_go(hook, argc, argv);
	exec_runc(argv);
	return 127;
}
