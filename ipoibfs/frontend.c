/*
 * ipoibfs-frontend: what `ipoibfs exec` binds over ip, ethtool and ifconfig.
 *
 * Starting Python costs more than the whole budget of a front end, so this launcher hands
 * the call to the front-end server that `ipoibfs exec` started in the host's namespaces
 * (hostexec.py, frontends_server.py), which forks an already-imported front end for it:
 * it sends its arguments, environment, stdin/stdout/stderr and working directory over the
 * server's socket and waits for one answer:
 *   "S" + int32     the front end's exit status;
 *   "E" + argv      the call is not ours: become the real tool (argv NUL-separated);
 *   "F"             the server will not run it (another namespace, other credentials).
 * Without a server, or on "F", it becomes the Python front end of the same tool
 * (EXEC_ROOT/TOOL.py), which does the same work in a process of its own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define EXEC_ROOT "/run/ipoibfs-exec"
#define MESSAGE_MAX (256 * 1024)

extern char **environ;

static char tool[NAME_MAX + 1];

static void python_front_end(char **argv)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/%s.py", EXEC_ROOT, tool);
	execv(path, argv);
	fprintf(stderr, "%s: the ipoibfs front end cannot start: %s: %s\n", tool, path,
		strerror(errno));
	exit(127);
}

static size_t put(char *buf, size_t at, const char *s)
{
	size_t n = strlen(s) + 1;

	if (at + n > MESSAGE_MAX)
		return MESSAGE_MAX + 1;
	memcpy(buf + at, s, n);
	return at + n;
}

static size_t put_count(char *buf, size_t at, uint32_t count)
{
	if (at + sizeof(count) > MESSAGE_MAX)
		return MESSAGE_MAX + 1;
	memcpy(buf + at, &count, sizeof(count));
	return at + sizeof(count);
}

int main(int argc, char **argv)
{
	static char buf[MESSAGE_MAX + 1];
	char exe[PATH_MAX], cbuf[CMSG_SPACE(4 * sizeof(int))];
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct iovec iov;
	struct msghdr msg = { 0 };
	struct cmsghdr *cmsg;
	int fds[4], sock;
	ssize_t n;
	size_t at = 0;
	uint32_t envc = 0;
	const char *name;

	/* Bound over /usr/bin/ip, this binary is /usr/bin/ip to the kernel. */
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0) {
		perror("ipoibfs-frontend: /proc/self/exe");
		return 127;
	}
	exe[n] = '\0';
	name = strrchr(exe, '/');
	name = name ? name + 1 : exe;
	if (strlen(name) >= sizeof(tool)) {
		fprintf(stderr, "ipoibfs-frontend: %s: name too long\n", exe);
		return 127;
	}
	memcpy(tool, name, strlen(name) + 1);

	sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/frontends.sock", EXEC_ROOT);
	if (sock < 0 || connect(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		python_front_end(argv);

	at = put(buf, at, tool);
	at = put_count(buf, at, (uint32_t)argc);
	for (int i = 0; i < argc && at <= MESSAGE_MAX; i++)
		at = put(buf, at, argv[i]);
	while (environ[envc])
		envc++;
	at = put_count(buf, at, envc);
	for (uint32_t i = 0; i < envc && at <= MESSAGE_MAX; i++)
		at = put(buf, at, environ[i]);
	if (at > MESSAGE_MAX)
		python_front_end(argv);

	fds[0] = 0;
	fds[1] = 1;
	fds[2] = 2;
	fds[3] = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fds[3] < 0)
		python_front_end(argv);
	iov.iov_base = buf;
	iov.iov_len = at;
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = cbuf;
	msg.msg_controllen = sizeof(cbuf);
	cmsg = CMSG_FIRSTHDR(&msg);
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(cmsg), fds, sizeof(fds));
	if (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0)
		python_front_end(argv);
	close(fds[3]);

	do
		n = recv(sock, buf, MESSAGE_MAX, 0);
	while (n < 0 && errno == EINTR);
	if (n >= 5 && buf[0] == 'S') {
		int32_t status;

		memcpy(&status, buf + 1, sizeof(status));
		return status;
	}
	if (n > 1 && buf[0] == 'E') {
		char *real[4096];
		int count = 0;

		buf[n] = '\0';
		for (char *p = buf + 1; p < buf + n && count < 4095; p += strlen(p) + 1)
			real[count++] = p;
		real[count] = NULL;
		if (count > 0) {
			execv(real[0], real);
			fprintf(stderr, "%s: %s: %s\n", tool, real[0], strerror(errno));
			return 127;
		}
	}
	if (n == 1 && buf[0] == 'F')
		python_front_end(argv);
	fprintf(stderr, "%s: the ipoibfs front end stopped without an answer\n", tool);
	return 1;
}
