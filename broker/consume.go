package broker

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ConsumeEach hands every message of the pull consumer cons to handle, one
// at a time, pulling up to batch messages ahead, until ctx is done. A
// failure to pull is logged (with what, saying which consumer) and
// retried after a second.
func ConsumeEach(ctx context.Context, cons jetstream.Consumer, batch int, log *slog.Logger, what string, handle func(jetstream.Msg)) {
	for ctx.Err() == nil {
		it, err := cons.Messages(jetstream.PullMaxMessages(batch))
		if err != nil {
			log.Error(what+": cannot pull; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		stop := context.AfterFunc(ctx, it.Stop)
		for {
			m, err := it.Next()
			if err != nil {
				if !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					log.Warn(what+": pulling", "err", err)
				}
				break
			}
			handle(m)
		}
		stop()
		it.Stop()
	}
}
