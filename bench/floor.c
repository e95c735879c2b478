/* The physical floor of a UDP relay on this machine: recvmsg one packet, sendmsg it to N
 * subscribers, nothing else (no SRTP, no parse, no rewrite). Built and run by bench/floor.py.
 *
 *   floor N COUNT SIZE PPS [BATCH]
 *
 * With BATCH > 1 the forwarder reads up to BATCH packets per recvmmsg and sends what it read to
 * each subscriber as one UDP GSO sendmsg (UDP_SEGMENT, Linux >= 4.18; all packets one size here,
 * as one video frame's packets nearly are): what batching could save at best.
 *
 * A child process sends COUNT packets of SIZE bytes at PPS (in bursts of 4) to the forwarder's
 * socket; the parent forwards each one to N bound sockets that a third process reads (so that
 * each datagram is delivered and wakes a reader, as in the relay; only the parent is counted). Prints one JSON
 * line: packets received, datagrams sent, the parent's user and system CPU in microseconds.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define MAX_BATCH 64

static int bound_socket(struct sockaddr_in *addr) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    socklen_t len = sizeof(*addr);
    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)addr, sizeof(*addr)) < 0 ||
        getsockname(fd, (struct sockaddr *)addr, &len) < 0) {
        perror("socket");
        exit(1);
    }
    return fd;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: floor N COUNT SIZE PPS [BATCH]\n");
        return 2;
    }
    int n = atoi(argv[1]);
    long count = atol(argv[2]);
    int size = atoi(argv[3]);
    double pps = atof(argv[4]);
    int batch = argc == 6 ? atoi(argv[5]) : 1;
    if (n < 1 || n > 1000 || count < 1 || size < 12 || size > 1500 || pps <= 0 || batch < 1 ||
        batch > MAX_BATCH) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    struct sockaddr_in in_addr;
    int in_fd = bound_socket(&in_addr);
    int rcvbuf = 1 << 20;
    setsockopt(in_fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct sockaddr_in *sinks = calloc((size_t)n, sizeof(*sinks));
    struct pollfd *sink_fds = calloc((size_t)n, sizeof(*sink_fds));
    for (int i = 0; i < n; i++) {
        sink_fds[i].fd = bound_socket(&sinks[i]);
        sink_fds[i].events = POLLIN;
    }
    /* the subscribers: a process that reads every sink, so that each datagram wakes a reader
     * as in the relay (its CPU is not counted) */
    pid_t reader = fork();
    if (reader == 0) {
        unsigned char sink_buf[2048];
        while (poll(sink_fds, (nfds_t)n, 3000) > 0) {
            for (int i = 0; i < n; i++) {
                while (recv(sink_fds[i].fd, sink_buf, sizeof(sink_buf), MSG_DONTWAIT) > 0) {
                }
            }
        }
        _exit(0);
    }
    pid_t child = fork();
    if (child == 0) {
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        unsigned char packet[1500];
        memset(packet, 0xAB, sizeof(packet));
        double start = now();
        /* in bursts of 4 back to back, as one 1 Mbit/s 30 fps video frame's packets come */
        for (long i = 0; i < count; i++) {
            if (i % 4 == 0) {
                double wait = start + i / pps - now();
                if (wait > 0) {
                    usleep((useconds_t)(wait * 1e6));
                }
            }
            sendto(fd, packet, (size_t)size, 0, (struct sockaddr *)&in_addr, sizeof(in_addr));
        }
        _exit(0);
    }
    int out_fd = socket(AF_INET, SOCK_DGRAM, 0);
    unsigned char buf[2048];
    struct iovec iov = {buf, sizeof(buf)};
    struct msghdr msg;
    long received = 0, sent = 0;
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    struct pollfd pfd = {in_fd, POLLIN, 0};
    static unsigned char bufs[MAX_BATCH][2048];
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iovs[MAX_BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } control;
    while (batch > 1 && received < count) {
        if (poll(&pfd, 1, 1000) <= 0) {
            break;
        }
        memset(msgs, 0, sizeof(msgs));
        for (int i = 0; i < batch; i++) {
            iovs[i].iov_base = bufs[i];
            iovs[i].iov_len = sizeof(bufs[i]);
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int got = recvmmsg(in_fd, msgs, (unsigned int)batch, MSG_DONTWAIT, NULL);
        if (got <= 0) {
            continue;
        }
        received += got;
        for (int i = 0; i < got; i++) {
            iovs[i].iov_len = msgs[i].msg_len;
        }
        struct msghdr out;
        memset(&out, 0, sizeof(out));
        out.msg_iov = iovs;
        out.msg_iovlen = (size_t)got;
        if (got > 1) {
            out.msg_control = control.buf;
            out.msg_controllen = sizeof(control.buf);
            struct cmsghdr *cm = CMSG_FIRSTHDR(&out);
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t segment = (uint16_t)msgs[0].msg_len;
            memcpy(CMSG_DATA(cm), &segment, sizeof(segment));
        }
        for (int i = 0; i < n; i++) {
            out.msg_name = &sinks[i];
            out.msg_namelen = sizeof(sinks[i]);
            if (sendmsg(out_fd, &out, MSG_DONTWAIT) >= 0) {
                sent += got;
            }
        }
    }
    while (received < count) {
        if (poll(&pfd, 1, 1000) <= 0) {
            break; /* a second without packets: the sender is done (some were dropped) */
        }
        memset(&msg, 0, sizeof(msg));
        iov.iov_len = sizeof(buf);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        ssize_t len = recvmsg(in_fd, &msg, MSG_DONTWAIT);
        if (len < 0) {
            continue;
        }
        received++;
        iov.iov_len = (size_t)len;
        for (int i = 0; i < n; i++) {
            msg.msg_name = &sinks[i];
            msg.msg_namelen = sizeof(sinks[i]);
            if (sendmsg(out_fd, &msg, MSG_DONTWAIT) == len) {
                sent++;
            }
        }
    }
    getrusage(RUSAGE_SELF, &after);
    kill(child, SIGTERM);
    waitpid(child, NULL, 0);
    kill(reader, SIGTERM);
    waitpid(reader, NULL, 0);
    long user = (after.ru_utime.tv_sec - before.ru_utime.tv_sec) * 1000000L +
                (after.ru_utime.tv_usec - before.ru_utime.tv_usec);
    long sys = (after.ru_stime.tv_sec - before.ru_stime.tv_sec) * 1000000L +
               (after.ru_stime.tv_usec - before.ru_stime.tv_usec);
    printf("{\"n\": %d, \"received\": %ld, \"sent\": %ld, \"user_us\": %ld, \"sys_us\": %ld}\n", n,
           received, sent, user, sys);
    return 0;
}
