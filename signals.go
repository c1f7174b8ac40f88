package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// opSignals carries the operator's signals to serve: SIGHUP (systemctl
// reload: reload a files-mode certificate) and SIGUSR1 (rotate the lookup
// pepper). main catches them before anything else, because their default
// action ends the process and they may come at any time, a reload during a
// slow start-up among them. Each has its own channel of one: a signal that
// is already pending absorbs the next of its kind, and a flood of one kind
// never crowds out the other. Nil channels (tests) never deliver.
type opSignals struct {
	hup, usr1 <-chan os.Signal
}

// catchOpSignals starts catching SIGHUP and SIGUSR1.
func catchOpSignals() opSignals {
	hup, usr1 := make(chan os.Signal, 1), make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	signal.Notify(usr1, syscall.SIGUSR1)
	return opSignals{hup: hup, usr1: usr1}
}

// cancelOn is ctx, also cancelled when ch delivers.
func cancelOn(ctx context.Context, ch <-chan os.Signal) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-ch:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// opSignal names what a signal asks for.
type opSignal int

const (
	reloadTLS    opSignal = iota // SIGHUP
	rotatePepper                 // SIGUSR1
)

func (s opSignal) String() string { return [...]string{"SIGHUP", "SIGUSR1"}[s] }

// waitingFor says, in the start-up log line, what a signal waits for.
func (s opSignal) waitingFor() string {
	return [...]string{"the certificate is reloaded once TLS is set up", "the pepper is rotated once the lookup index is built"}[s]
}

// signalLoop acts on serve's signals. Until the part a signal concerns
// exists, the signal is logged once and remembered (any number of them
// count as one); the part's action runs when it is registered with ready.
// Actions run one at a time on the loop's goroutine.
type signalLoop struct {
	actions chan registration
	cancel  context.CancelFunc
	done    chan struct{}
	once    sync.Once
}

type registration struct {
	sig opSignal
	act func(context.Context)
}

func startSignalLoop(ctx context.Context, sig opSignals, log *slog.Logger) *signalLoop {
	ctx, cancel := context.WithCancel(ctx)
	l := &signalLoop{actions: make(chan registration), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		var acts [2]func(context.Context)
		var pending [2]bool
		got := func(s opSignal) {
			switch {
			case acts[s] != nil:
				acts[s](ctx)
			case !pending[s]:
				pending[s] = true
				log.Info(s.String()+" during start-up: "+s.waitingFor(), "signal", s.String())
			}
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-sig.hup:
				got(reloadTLS)
			case <-sig.usr1:
				got(rotatePepper)
			case r := <-l.actions:
				acts[r.sig] = r.act
				if pending[r.sig] {
					pending[r.sig] = false
					log.Info("acting on the "+r.sig.String()+" received during start-up", "signal", r.sig.String())
					r.act(ctx)
				}
			}
		}
	}()
	return l
}

// ready registers what sig does from now on; a sig received before runs
// it now.
func (l *signalLoop) ready(sig opSignal, act func(context.Context)) {
	select {
	case l.actions <- registration{sig, act}:
	case <-l.done:
	}
}

// stop ends the loop, cancelling an action under way, and waits for it.
// It may be called more than once.
func (l *signalLoop) stop() {
	l.once.Do(func() {
		l.cancel()
		<-l.done
	})
}
