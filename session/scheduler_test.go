package session

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testQueue is a worker on s, as a Manager has one, with its context.
type testQueue struct {
	worker
	cancel context.CancelFunc
	errs   chan error
}

func newTestQueue(s *Scheduler) *testQueue {
	ctx, cancel := context.WithCancel(context.Background())
	q := &testQueue{cancel: cancel, errs: make(chan error, 100)}
	q.init(s, ctx, func(err error) { q.errs <- err })
	return q
}

// shut closes q as Manager.Close does: cancel, then close.
func (q *testQueue) shut() {
	q.cancel()
	q.close()
}

func waitIdle(t *testing.T, qs ...*testQueue) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, q := range qs {
		if err := q.idle(ctx); err != nil {
			t.Fatalf("queue not idle: %v", err)
		}
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (s *Scheduler) stats() (running, peak int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running, s.peak
}

// goroutinesBackTo waits for the number of goroutines to fall to base.
func goroutinesBackTo(t *testing.T, base int) {
	t.Helper()
	n := runtime.NumGoroutine()
	for deadline := time.Now().Add(5 * time.Second); n > base && time.Now().Before(deadline); n = runtime.NumGoroutine() {
		time.Sleep(time.Millisecond)
	}
	if n > base {
		t.Fatalf("%d goroutines, %d before", n, base)
	}
}

// The tasks of one queue run in the order they were queued, one at a
// time, while the queues of several Managers share the workers.
func TestSchedulerOrderPerQueue(t *testing.T) {
	s := NewScheduler(4)
	const queues, tasks = 8, 200
	qs := make([]*testQueue, queues)
	got := make([][]int, queues)
	var inside [queues]atomic.Int32
	var overlap atomic.Bool
	for i := range qs {
		qs[i] = newTestQueue(s)
	}
	for j := range tasks {
		for i, q := range qs {
			q.enqueue(fmt.Sprint(j), func(context.Context) error {
				if inside[i].Add(1) != 1 {
					overlap.Store(true)
				}
				got[i] = append(got[i], j)
				runtime.Gosched()
				inside[i].Add(-1)
				return nil
			})
		}
	}
	waitIdle(t, qs...)
	if overlap.Load() {
		t.Error("two tasks of one queue ran at the same time")
	}
	for i := range qs {
		if len(got[i]) != tasks || !slices.IsSorted(got[i]) {
			t.Errorf("queue %d ran %d tasks in order %v", i, len(got[i]), got[i])
		}
	}
	if _, peak := s.stats(); peak > 4 {
		t.Errorf("%d workers at once, more than 4", peak)
	}
}

// A task queued again under a pending key replaces it in place; once it
// has started, the key can be queued anew.
func TestSchedulerCoalesce(t *testing.T) {
	s := NewScheduler(2)
	q := newTestQueue(s)
	defer q.shut()
	var mu sync.Mutex
	var ran []string
	record := func(name string) func(context.Context) error {
		return func(context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			ran = append(ran, name)
			return nil
		}
	}
	started, release := make(chan struct{}), make(chan struct{})
	q.enqueue("block", func(context.Context) error {
		close(started)
		<-release
		return nil
	})
	<-started
	q.enqueue("a", record("a1"))
	q.enqueue("b", record("b"))
	q.enqueue("a", record("a2"))
	q.enqueue("block", record("block again")) // the running one is not pending
	close(release)
	waitIdle(t, q)
	if want := []string{"a2", "b", "block again"}; !slices.Equal(ran, want) {
		t.Fatalf("ran %v, want %v", ran, want)
	}
}

// However many queues have work, at most the pool's workers run tasks,
// and all of it gets done.
func TestSchedulerBound(t *testing.T) {
	const workers, queues = 3, 20
	s := NewScheduler(workers)
	var now, most atomic.Int32
	release := make(chan struct{})
	var done atomic.Int32
	qs := make([]*testQueue, queues)
	for i := range qs {
		qs[i] = newTestQueue(s)
		for j := range 3 {
			qs[i].enqueue(fmt.Sprint(j), func(context.Context) error {
				n := now.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				<-release
				now.Add(-1)
				done.Add(1)
				return nil
			})
		}
	}
	waitFor(t, "the workers to be busy", func() bool { return now.Load() == workers })
	time.Sleep(20 * time.Millisecond) // room for a worker too many
	if n := now.Load(); n != workers {
		t.Fatalf("%d tasks run at once, want %d", n, workers)
	}
	close(release)
	waitIdle(t, qs...)
	if n := done.Load(); n != 3*queues {
		t.Fatalf("%d tasks done, want %d", n, 3*queues)
	}
	if m := most.Load(); m != workers {
		t.Fatalf("at most %d tasks at once, want %d", m, workers)
	}
	if _, peak := s.stats(); peak != workers {
		t.Fatalf("%d worker goroutines at once, want %d", peak, workers)
	}
}

// A slow task holds one worker and its own queue: the other queues' tasks
// run meanwhile.
func TestSchedulerSlowTask(t *testing.T) {
	s := NewScheduler(2)
	slow, other := newTestQueue(s), newTestQueue(s)
	defer slow.shut()
	started, release := make(chan struct{}), make(chan struct{})
	slow.enqueue("network", func(context.Context) error {
		close(started)
		<-release
		return nil
	})
	var next atomic.Bool
	slow.enqueue("next", func(context.Context) error { next.Store(true); return nil })
	<-started
	var n atomic.Int32
	for i := range 50 {
		other.enqueue(fmt.Sprint(i), func(context.Context) error { n.Add(1); return nil })
	}
	waitIdle(t, other)
	if n.Load() != 50 {
		t.Fatalf("%d tasks of another queue ran while one was slow, want 50", n.Load())
	}
	if next.Load() {
		t.Fatal("a task ran while the one before it in its queue was running")
	}
	close(release)
	waitIdle(t, slow)
	if !next.Load() {
		t.Fatal("the task after the slow one did not run")
	}
}

// close drops the pending tasks, waits for the running one (whose context
// is cancelled) and refuses new ones; an error of a cancelled task is not
// reported.
func TestSchedulerClose(t *testing.T) {
	s := NewScheduler(2)
	q := newTestQueue(s)
	started := make(chan struct{})
	var ended atomic.Bool
	q.enqueue("running", func(ctx context.Context) error {
		close(started)
		<-ctx.Done()
		time.Sleep(20 * time.Millisecond)
		ended.Store(true)
		return ctx.Err()
	})
	var pending atomic.Bool
	q.enqueue("pending", func(context.Context) error { pending.Store(true); return nil })
	<-started
	q.shut()
	if !ended.Load() {
		t.Fatal("close returned before the running task ended")
	}
	if q.enqueue("late", func(context.Context) error { pending.Store(true); return nil }) {
		t.Fatal("a task was queued after close")
	}
	time.Sleep(20 * time.Millisecond)
	if pending.Load() {
		t.Fatal("a task ran after close")
	}
	select {
	case err := <-q.errs:
		t.Fatalf("the error of a cancelled task was reported: %v", err)
	default:
	}
	if err := q.idle(context.Background()); err != nil {
		t.Fatalf("idle after close: %v", err)
	}
}

// Errors of tasks go to onError; a full queue drops and reports.
func TestSchedulerErrors(t *testing.T) {
	s := NewScheduler(1)
	q := newTestQueue(s)
	defer q.shut()
	errTask := errors.New("task failed")
	q.enqueue("fail", func(context.Context) error { return errTask })
	waitIdle(t, q)
	if err := <-q.errs; !errors.Is(err, errTask) {
		t.Fatalf("reported %v, want %v", err, errTask)
	}

	started, release := make(chan struct{}), make(chan struct{})
	q.enqueue("block", func(context.Context) error { close(started); <-release; return nil })
	<-started
	for i := range maxPending {
		if !q.enqueue(fmt.Sprint(i), func(context.Context) error { return nil }) {
			t.Fatalf("task %d refused", i)
		}
	}
	if q.enqueue("one too many", func(context.Context) error { return nil }) {
		t.Fatal("a task beyond maxPending was queued")
	}
	if err := <-q.errs; err == nil {
		t.Fatal("a dropped task was not reported")
	}
	close(release)
	waitIdle(t, q)
}

// A timed task runs after its delay unless its timer is stopped, and
// waiting costs no goroutine.
func TestSchedulerTimers(t *testing.T) {
	base := runtime.NumGoroutine()
	s := NewScheduler(2)
	q := newTestQueue(s)
	defer q.shut()
	var later []*time.Timer
	for i := range 1000 {
		later = append(later, q.after(time.Hour, fmt.Sprint(i), func(context.Context) error { return nil }))
	}
	if n := runtime.NumGoroutine(); n > base {
		t.Errorf("%d goroutines while 1000 timers wait, %d before", n, base)
	}
	for _, l := range later {
		l.Stop()
	}
	fired := make(chan time.Time, 1)
	start := time.Now()
	q.after(30*time.Millisecond, "timed", func(context.Context) error { fired <- time.Now(); return nil })
	var stoppedRan atomic.Bool
	stopped := q.after(20*time.Millisecond, "stopped", func(context.Context) error { stoppedRan.Store(true); return nil })
	stopped.Stop()
	select {
	case at := <-fired:
		if d := at.Sub(start); d < 30*time.Millisecond {
			t.Fatalf("the timed task ran after %v, before its delay", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the timed task did not run")
	}
	waitIdle(t, q)
	if stoppedRan.Load() {
		t.Fatal("a stopped timed task ran")
	}
	goroutinesBackTo(t, base)
}

// Once the work is done, the workers exit: the scheduler keeps no
// goroutine, and queues keep no memory of their bursts.
func TestSchedulerNoLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	s := NewScheduler(4)
	qs := make([]*testQueue, 100)
	for i := range qs {
		qs[i] = newTestQueue(s)
		for j := range 20 {
			qs[i].enqueue(fmt.Sprint(j), func(context.Context) error { return nil })
		}
	}
	waitIdle(t, qs...)
	goroutinesBackTo(t, base)
	if running, _ := s.stats(); running != 0 {
		t.Fatalf("%d workers counted running, none left", running)
	}
	for i, q := range qs {
		q.mu.Lock()
		kept := q.pending != nil || q.tasks != nil
		q.mu.Unlock()
		if kept {
			t.Fatalf("idle queue %d keeps its pending list", i)
		}
		q.shut()
	}
	s.mu.Lock()
	left := len(s.ready) - s.head
	s.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d queues left waiting", left)
	}
}

// The queues take turns: a queue with much work does not hold the only
// worker until it is done.
func TestSchedulerFair(t *testing.T) {
	s := NewScheduler(1)
	busy, other := newTestQueue(s), newTestQueue(s)
	defer busy.shut()
	defer other.shut()
	var mu sync.Mutex
	var order []string
	note := func(name string) func(context.Context) error {
		return func(context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			order = append(order, name)
			return nil
		}
	}
	started, release := make(chan struct{}), make(chan struct{})
	busy.enqueue("first", func(context.Context) error { close(started); <-release; return nil })
	<-started
	for i := range 5 {
		busy.enqueue(fmt.Sprint(i), note("busy"))
	}
	other.enqueue("x", note("other"))
	close(release)
	waitIdle(t, busy, other)
	if i := slices.Index(order, "other"); i < 0 || i > 1 {
		t.Fatalf("the other queue's task ran in position %d of %v", i, order)
	}
}

func TestDefaultScheduler(t *testing.T) {
	if n := defaultScheduler().Workers(); n != DefaultSchedulerWorkers() || n < 4 {
		t.Fatalf("the default scheduler has %d workers, want %d (at least 4)", n, DefaultSchedulerWorkers())
	}
	if defaultScheduler() != defaultScheduler() {
		t.Fatal("the default scheduler is not shared")
	}
	if n := NewScheduler(-1).Workers(); n != DefaultSchedulerWorkers() {
		t.Fatalf("NewScheduler(-1) has %d workers", n)
	}
}
