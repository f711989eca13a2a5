/*
 * ipoibfs-frontend: what `ipoibfs exec` binds over ip, ethtool, ifconfig and arping.
 *
 * Starting Python costs more than the whole budget of a front end, so this launcher hands
 * the call to the front-end server that `ipoibfs exec` started in the host's namespaces
 * (hostexec.py, frontends_server.py), which forks an already-imported front end for it:
 * it sends its arguments, environment, stdin/stdout/stderr and working directory over the
 * server's socket and waits for one answer:
 *   "S" + int32     the front end's exit status (-N: it died by signal N);
 *   "E" + argv      the call is not ours: become the real tool (path, then argv, each
 *                   NUL-terminated);
 *   "F"             the server will not run it (another namespace, other credentials).
 * While it waits, SIGINT, SIGTERM, SIGHUP and SIGQUIT (those the caller does not ignore)
 * are caught and sent on as "K" + int32 signo: the served front end raises them in its own
 * process group, and this launcher ends as it did (its status, or the same signal). The
 * front end first says its process group ("P" + int32), which SIGTSTP (Ctrl-Z) stops and
 * SIGCONT continues, with this launcher.
 * Without a server, or on "F", it becomes the Python front end of the same tool
 * (EXEC_ROOT/TOOL.py), which does the same work in a process of its own; it is told the
 * caller's argv[0] in IPOIBFS_ARGV0, since a script's argv[0] is its path.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define EXEC_ROOT "/run/ipoibfs-exec"
#define MESSAGE_MAX (256 * 1024) /* frontends_server.MESSAGE_MAX */

extern char **environ;

static const char *const TOOLS[] = { "ip", "ethtool", "ifconfig", "arping" };
/* The first NFORWARDED are passed on as "K"; Ctrl-Z and fg stop and continue the front end. */
static const int CAUGHT[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP, SIGCONT };
#define NCAUGHT (sizeof(CAUGHT) / sizeof(CAUGHT[0]))
#define NFORWARDED 4
#define TSTP_AT 4
#define CONT_AT 5

static const char *tool;
static sigset_t old_mask;
static struct sigaction old_actions[NCAUGHT];
static int catching; /* the handlers are installed and the signals blocked */
static volatile sig_atomic_t pending[NCAUGHT];
static pid_t front_end; /* its process group, once it said ("P") */

static void on_signal(int signo)
{
	for (size_t i = 0; i < NCAUGHT; i++)
		if (CAUGHT[i] == signo)
			pending[i] = 1;
}

/* Block the forwarded signals and catch those the caller does not ignore. */
static int catch_signals(void)
{
	struct sigaction sa = { .sa_handler = on_signal };
	sigset_t block;

	if (sigemptyset(&block) < 0 || sigemptyset(&sa.sa_mask) < 0)
		return -1;
	for (size_t i = 0; i < NCAUGHT; i++)
		if (sigaddset(&block, CAUGHT[i]) < 0 || sigaddset(&sa.sa_mask, CAUGHT[i]) < 0)
			return -1;
	if (sigprocmask(SIG_BLOCK, &block, &old_mask) < 0)
		return -1;
	catching = 1;
	for (size_t i = 0; i < NCAUGHT; i++) {
		if (sigaction(CAUGHT[i], NULL, &old_actions[i]) < 0)
			return -1;
		if (old_actions[i].sa_handler == SIG_IGN)
			continue; /* `cmd &` in a script: not ours to see either */
		if (sigaction(CAUGHT[i], &sa, NULL) < 0)
			return -1;
	}
	return 0;
}

/* The caller's dispositions and mask again: what is pending is delivered as it would be. */
static void release_signals(void)
{
	if (!catching)
		return;
	catching = 0;
	for (size_t i = 0; i < NCAUGHT; i++)
		if (old_actions[i].sa_handler != SIG_IGN)
			sigaction(CAUGHT[i], &old_actions[i], NULL);
	sigprocmask(SIG_SETMASK, &old_mask, NULL);
}

/* End as a process killed by signo ends; 128 + signo if the signal does not kill. */
static void die_by(int signo)
{
	sigset_t one;

	release_signals();
	signal(signo, SIG_DFL);
	if (sigemptyset(&one) == 0 && sigaddset(&one, signo) == 0)
		sigprocmask(SIG_UNBLOCK, &one, NULL);
	raise(signo);
	exit(128 + signo);
}

static void python_front_end(char **argv)
{
	char path[PATH_MAX];

	release_signals();
	if (snprintf(path, sizeof(path), "%s/%s.py", EXEC_ROOT, tool) >= (int)sizeof(path)) {
		fprintf(stderr, "%s: the ipoibfs front end's path is too long\n", tool);
		exit(127);
	}
	if (setenv("IPOIBFS_ARGV0", argv[0] ? argv[0] : tool, 1) < 0) {
		fprintf(stderr, "%s: the ipoibfs front end cannot start: %s\n", tool, strerror(errno));
		exit(127);
	}
	execv(path, argv);
	fprintf(stderr, "%s: the ipoibfs front end cannot start: %s: %s\n", tool, path,
		strerror(errno));
	exit(127);
}

static char *put(char *at, const char *s)
{
	size_t n = strlen(s) + 1;

	memcpy(at, s, n);
	return at + n;
}

static char *put_count(char *at, uint32_t count)
{
	memcpy(at, &count, sizeof(count));
	return at + sizeof(count);
}

/* The request: tool NUL, argc, argv NUL each, envc, environ NUL each; NULL if too long. */
static char *request(int argc, char **argv, size_t *length)
{
	size_t size = strlen(tool) + 1 + 2 * sizeof(uint32_t);
	uint32_t envc = 0;
	char *buf, *at;

	for (int i = 0; i < argc; i++) {
		size += strlen(argv[i]) + 1;
		if (size > MESSAGE_MAX)
			return NULL;
	}
	for (; environ[envc]; envc++) {
		size += strlen(environ[envc]) + 1;
		if (size > MESSAGE_MAX || envc == UINT32_MAX - 1)
			return NULL;
	}
	buf = malloc(size);
	if (!buf)
		return NULL;
	at = put(buf, tool);
	at = put_count(at, (uint32_t)argc);
	for (int i = 0; i < argc; i++)
		at = put(at, argv[i]);
	at = put_count(at, envc);
	for (uint32_t i = 0; i < envc; i++)
		at = put(at, environ[i]);
	*length = (size_t)(at - buf);
	return buf;
}

static int send_request(int sock, char *buf, size_t length)
{
	char cbuf[CMSG_SPACE(4 * sizeof(int))] = { 0 };
	struct iovec iov = { .iov_base = buf, .iov_len = length };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			      .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
	int fds[4] = { 0, 1, 2, -1 };
	ssize_t n;

	fds[3] = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fds[3] < 0)
		return -1;
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(cmsg), fds, sizeof(fds));
	do
		n = sendmsg(sock, &msg, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	close(fds[3]);
	return n == (ssize_t)length ? 0 : -1;
}

/* Send on what was caught; the last signal sent, or `last` if none. */
static int forward_pending(int sock, int last)
{
	char kill_msg[1 + sizeof(int32_t)] = "K";

	for (size_t i = 0; i < NFORWARDED; i++) {
		int32_t signo = CAUGHT[i];

		if (!pending[i])
			continue;
		pending[i] = 0;
		memcpy(kill_msg + 1, &signo, sizeof(signo));
		/* a front end that is gone already answers (or hangs up) anyway */
		send(sock, kill_msg, sizeof(kill_msg), MSG_NOSIGNAL | MSG_DONTWAIT);
		last = signo;
	}
	return last;
}

/* Ctrl-Z: the front end's group stops, then this launcher as SIGTSTP would stop it; on
 * SIGCONT (fg, bg) the group continues. Before the front end said where it is, only the
 * launcher stops, as without this. */
static void job_control(void)
{
	struct sigaction dfl = { .sa_handler = SIG_DFL }, again;
	sigset_t tstp;

	if (pending[TSTP_AT]) {
		pending[TSTP_AT] = 0;
		if (front_end > 0)
			kill(-front_end, SIGTSTP);
		if (sigemptyset(&tstp) == 0 && sigaddset(&tstp, SIGTSTP) == 0 &&
		    sigaction(SIGTSTP, &dfl, &again) == 0) {
			sigprocmask(SIG_UNBLOCK, &tstp, NULL);
			raise(SIGTSTP); /* stopped here until SIGCONT */
			sigprocmask(SIG_BLOCK, &tstp, NULL);
			sigaction(SIGTSTP, &again, NULL);
		}
	}
	if (pending[CONT_AT]) {
		pending[CONT_AT] = 0;
		if (front_end > 0)
			kill(-front_end, SIGCONT);
	}
}

/* Wait for the answer, passing signals on: its length (0 for none), or -1. */
static ssize_t answer(int sock, char **reply, int *last_signal)
{
	struct pollfd pfd = { .fd = sock, .events = POLLIN };
	struct iovec iov;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t size, n;

	for (;;) {
		for (;;) {
			int ready = ppoll(&pfd, 1, NULL, &old_mask);

			*last_signal = forward_pending(sock, *last_signal);
			job_control();
			if (ready > 0)
				break;
			if (ready < 0 && errno != EINTR)
				return -1;
		}
		do
			size = recv(sock, NULL, 0, MSG_PEEK | MSG_TRUNC);
		while (size < 0 && errno == EINTR);
		if (size <= 0)
			return size < 0 && errno != ECONNRESET ? -1 : 0;
		free(*reply);
		*reply = malloc((size_t)size + 1);
		if (!*reply)
			return -1;
		iov.iov_base = *reply;
		iov.iov_len = (size_t)size;
		do
			n = recvmsg(sock, &msg, 0);
		while (n < 0 && errno == EINTR);
		if (n != size || (msg.msg_flags & MSG_TRUNC))
			return -1;
		(*reply)[n] = '\0';
		if (n == 1 + sizeof(int32_t) && (*reply)[0] == 'P') {
			int32_t pgid;

			memcpy(&pgid, *reply + 1, sizeof(pgid));
			front_end = pgid; /* not the answer yet */
			continue;
		}
		return n;
	}
}

/* "E": path NUL argv[0] NUL argv[1] ... each NUL-terminated; it does not return. */
static void exec_real(char **argv, char *items, size_t length, int last_signal)
{
	size_t count = 0;
	char **real;

	if (last_signal)
		die_by(last_signal); /* interrupted before the real tool began */
	if (length == 0 || items[length - 1] != '\0')
		python_front_end(argv); /* never run a cut command line */
	for (size_t i = 0; i < length; i++)
		count += items[i] == '\0';
	if (count < 2)
		python_front_end(argv);
	real = calloc(count + 1, sizeof(*real));
	if (!real)
		python_front_end(argv);
	count = 0;
	for (char *p = items; p < items + length; p += strlen(p) + 1)
		real[count++] = p;
	real[count] = NULL;
	release_signals();
	execv(real[0], real + 1);
	fprintf(stderr, "%s: %s: %s\n", tool, real[0], strerror(errno));
	exit(127);
}

int main(int argc, char **argv)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char exe[PATH_MAX], *buf, *reply = NULL;
	const char *name;
	int sock, last_signal = 0;
	size_t length = 0;
	ssize_t n;

	/* Bound over /usr/bin/ip, this binary is /usr/bin/ip to the kernel. */
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0) {
		perror("ipoibfs-frontend: /proc/self/exe");
		return 127;
	}
	exe[n] = '\0';
	name = strrchr(exe, '/');
	name = name ? name + 1 : exe;
	tool = NULL;
	for (size_t i = 0; i < sizeof(TOOLS) / sizeof(TOOLS[0]); i++)
		if (strcmp(name, TOOLS[i]) == 0)
			tool = TOOLS[i];
	if (!tool) {
		fprintf(stderr, "ipoibfs-frontend: %s is not a tool with an ipoibfs front end\n",
			exe);
		return 127;
	}
	if (argc < 1 || !argv[0])
		python_front_end(argv);

	buf = request(argc, argv, &length);
	if (!buf)
		python_front_end(argv); /* too long for one message: a process of its own */
	sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (sock < 0)
		python_front_end(argv);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/frontends.sock", EXEC_ROOT);
	if (connect(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		python_front_end(argv);
	/* From here a signal is the served front end's: none may be lost or end us alone. */
	if (catch_signals() < 0 || send_request(sock, buf, length) < 0)
		python_front_end(argv); /* what was caught meanwhile is delivered now */
	free(buf);

	n = answer(sock, &reply, &last_signal);
	if (n == 5 && reply[0] == 'S') {
		int32_t status;

		memcpy(&status, reply + 1, sizeof(status));
		if (status < 0 && status >= -64)
			die_by(-status);
		release_signals();
		return status;
	}
	if (n > 1 && reply[0] == 'E')
		exec_real(argv, reply + 1, (size_t)n - 1, last_signal);
	if (n == 1 && reply[0] == 'F') {
		if (last_signal)
			die_by(last_signal);
		python_front_end(argv);
	}
	if (n == 0 && last_signal)
		die_by(last_signal); /* the front end died of what it was sent */
	if (n < 0)
		python_front_end(argv); /* no answer read: nothing ran (or it stays unread) */
	release_signals();
	fprintf(stderr, "%s: the ipoibfs front end stopped without an answer\n", tool);
	return 1;
}
