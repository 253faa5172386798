# The NATS server image: the static nats-server binary at the version
# go.mod pins, FROM scratch. Build it with deploy/images/build.sh. Give it a
# configuration with -c (deploy/cluster/nats/n1.conf, ...); the cluster's
# configurations keep JetStream's store under /data.
FROM scratch
COPY rootfs/ /
COPY nats-server /bin/nats-server
EXPOSE 4222 6222 8222
ENTRYPOINT ["/bin/nats-server"]
CMD ["--jetstream", "--store_dir", "/data/jetstream", "--http_port", "8222"]
