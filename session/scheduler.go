package session

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"
)

// A Scheduler runs the background work of Managers (bundle uploads, empty
// replies and heartbeats, signed pre key rotation checks, the checks of
// the own device lists, the sweeps of used pre keys) on a pool of
// goroutines shared by all of them, so that an idle Manager costs no
// goroutine: a server hosting thousands of accounts runs at most the
// pool's goroutines for all of their background work, however many
// accounts it has, and none at all while they are idle. Its worker
// goroutines are started when work arrives and exit when none is left;
// waits (the next rotation check, the next sweep) are runtime timers,
// which cost no goroutine either. A Scheduler needs no closing.
//
// Each Manager has its own queue on the Scheduler: its tasks run one at a
// time, in the order they were queued (a task queued again while it is
// pending is replaced in place), never concurrently with each other, as
// they would on a goroutine of the Manager's own. The queues of different
// Managers take turns: a worker runs one task of a queue, then moves on
// to the next queue waiting, so that a Manager with much work does not
// starve the others.
//
// A task can be slow: it may wait for the network (each call bounded by
// Config.NetworkTimeout) or, rarely, back off before publishing the own
// device list again. A slow task holds one worker, and only its own
// Manager's queue waits for it: the other Managers' tasks run on the
// other workers. Only when every worker is held by a slow task (one per
// Manager at most) do the other queues wait, at most until one of those
// tasks ends; the bound on workers is also the bound on the network calls
// that background work has in flight at once.
//
// A Scheduler is safe for concurrent use. Managers that share one need
// not belong to the same account store.
type Scheduler struct {
	workers int

	mu      sync.Mutex
	ready   []*worker // queues with a task to run, first at head
	head    int
	running int // worker goroutines
	peak    int // most worker goroutines at once (for tests)
}

// NewScheduler returns a Scheduler that runs at most workers tasks at
// once; DefaultSchedulerWorkers if workers is zero or negative.
func NewScheduler(workers int) *Scheduler {
	if workers <= 0 {
		workers = DefaultSchedulerWorkers()
	}
	return &Scheduler{workers: workers}
}

// DefaultSchedulerWorkers is the size of the pool of the Scheduler that
// Managers share when Config.Scheduler is nil, and of NewScheduler(0):
// twice GOMAXPROCS, at least 4. Background work mostly waits for the
// network, so it may exceed the processors a little.
func DefaultSchedulerWorkers() int { return max(4, 2*runtime.GOMAXPROCS(0)) }

// defaultScheduler is shared by the Managers whose Config has none.
var defaultScheduler = sync.OnceValue(func() *Scheduler { return NewScheduler(0) })

// Workers is the most tasks s runs at once.
func (s *Scheduler) Workers() int { return s.workers }

// schedule appends w to the queues waiting for a worker, starting one if
// the pool has room. The caller holds w.mu and has set w.queued.
func (s *Scheduler) schedule(w *worker) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ready = append(s.ready, w)
	if s.running < s.workers {
		s.running++
		s.peak = max(s.peak, s.running)
		go s.work()
	}
}

// work runs a task of the next waiting queue until none waits.
func (s *Scheduler) work() {
	for {
		s.mu.Lock()
		if s.head == len(s.ready) {
			s.running--
			s.ready, s.head = s.ready[:0], 0
			if cap(s.ready) > 1024 {
				s.ready = nil // a burst is over: do not keep its array
			}
			s.mu.Unlock()
			return
		}
		w := s.ready[s.head]
		s.ready[s.head] = nil
		s.head++
		if s.head >= 1024 && 2*s.head >= len(s.ready) {
			n := copy(s.ready, s.ready[s.head:])
			clear(s.ready[n:])
			s.ready, s.head = s.ready[:n], 0
		}
		s.mu.Unlock()
		w.runOne()
	}
}

// maxPending bounds the background queue; beyond it new work is dropped
// and reported, so a flood of key exchanges cannot grow memory without
// bound.
const maxPending = 10000

// worker is the queue of a Manager on a Scheduler: follow-up network work
// (bundle uploads, empty messages) and timed checks, run one task at a
// time, off the caller's goroutine. Tasks with the same key are coalesced
// while pending. An idle worker holds no goroutine and (nearly) no
// memory.
type worker struct {
	sched   *Scheduler
	ctx     context.Context
	onError func(error)

	mu      sync.Mutex
	cond    sync.Cond // signalled when a task ends or the worker closes
	pending []string
	tasks   map[string]func(context.Context) error // allocated while pending
	busy    bool                                   // a task runs
	queued  bool                                   // in sched.ready
	closed  bool
}

func (w *worker) init(s *Scheduler, ctx context.Context, onError func(error)) {
	w.sched, w.ctx, w.onError = s, ctx, onError
	w.cond.L = &w.mu
}

// enqueue queues f under key, replacing the pending task of that key if
// there is one, and reports whether f is queued: not after close, nor
// when the queue is full (reported through onError).
func (w *worker) enqueue(key string, f func(context.Context) error) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	if _, ok := w.tasks[key]; ok {
		w.tasks[key] = f
		return true
	}
	if len(w.pending) >= maxPending {
		w.onError(fmt.Errorf("omemo: background queue full, dropped %s", key))
		return false
	}
	if w.tasks == nil {
		w.tasks = map[string]func(context.Context) error{}
	}
	w.pending = append(w.pending, key)
	w.tasks[key] = f
	if !w.busy && !w.queued {
		w.queued = true
		w.sched.schedule(w)
	}
	return true
}

// after queues f under key after d, unless the returned timer is stopped
// first. Waiting costs no goroutine.
func (w *worker) after(d time.Duration, key string, f func(context.Context) error) *time.Timer {
	return time.AfterFunc(d, func() { w.enqueue(key, f) })
}

// runOne runs the first pending task, on a worker of the Scheduler, and
// queues w again if more are pending.
func (w *worker) runOne() {
	w.mu.Lock()
	w.queued = false
	if w.closed || len(w.pending) == 0 {
		w.mu.Unlock()
		return
	}
	key := w.pending[0]
	w.pending[0] = ""
	w.pending = w.pending[1:]
	f := w.tasks[key]
	delete(w.tasks, key)
	w.busy = true
	w.mu.Unlock()

	defer func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.busy = false
		if len(w.pending) == 0 {
			// Idle: keep nothing of the burst.
			w.pending, w.tasks = nil, nil
		} else if !w.closed {
			w.queued = true
			w.sched.schedule(w) // after the other queues waiting
		}
		w.cond.Broadcast()
	}()
	if err := f(w.ctx); err != nil && w.ctx.Err() == nil {
		w.onError(err)
	}
}

// idle waits until no work is pending or running, or ctx is done.
func (w *worker) idle(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		w.mu.Lock()
		w.cond.Broadcast()
		w.mu.Unlock()
	})
	defer stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	for (len(w.pending) > 0 || w.busy) && !w.closed {
		if err := ctx.Err(); err != nil {
			return err
		}
		w.cond.Wait()
	}
	return nil
}

// close drops the pending tasks and waits for the running one (whose
// context the caller has cancelled). Tasks queued later are dropped.
func (w *worker) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	w.pending, w.tasks = nil, nil
	w.cond.Broadcast()
	for w.busy {
		w.cond.Wait()
	}
}
