# The flinger image: the static flinger binary and a static busybox as
# /bin/sh (jobs' test_cmds lists run with /bin/sh -c; /bin/bash, which
# test_cmds scripts without "#!" get, is busybox's ash too), FROM scratch.
# Build it with deploy/images/build.sh, which prepares the context: flinger,
# and rootfs/ holding bin/busybox, a link per busybox applet, tmp/ and
# var/lib/flinger/runs/.
FROM scratch
COPY rootfs/ /
COPY flinger /bin/flinger
ENV PATH=/bin HOME=/tmp TMPDIR=/tmp
WORKDIR /var/lib/flinger
ENTRYPOINT ["/bin/flinger"]
CMD ["--help"]
