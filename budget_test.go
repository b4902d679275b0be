package ratelimit

import "testing"

func TestTopUpFollowsDemandShare(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    leaseView
		want int64
	}{
		{"no demand", leaseView{fit: 1000, demand: 0, instances: 3}, 0},
		{"nothing fits", leaseView{fit: 0, demand: 50, mine: 9, total: 10, instances: 3}, 0},
		{"covers two intervals", leaseView{fit: 1000, demand: 50, mine: 9, total: 10, instances: 3}, 100},
		{"held counts", leaseView{fit: 1000, held: 70, demand: 50, mine: 9, total: 10, instances: 3}, 30},
		{"90% share", leaseView{fit: 100, demand: 500, mine: 90, total: 100, instances: 3}, 90},
		{"10% share", leaseView{fit: 100, demand: 500, mine: 10, total: 100, instances: 3}, 10},
		{"no share data", leaseView{fit: 100, demand: 500, instances: 4}, 25},
		{"inconsistent view", leaseView{fit: 100, demand: 500, mine: 20, total: 10, instances: 2}, 100},
		{"not reported yet", leaseView{fit: 100, demand: 500, mine: 0, total: 10, instances: 2}, 0},
	} {
		if got := tc.v.topUp(); got != tc.want {
			t.Errorf("%s: %+v.topUp() = %d, want %d", tc.name, tc.v, got, tc.want)
		}
	}
}

func TestExcess(t *testing.T) {
	for _, tc := range []struct {
		held, demand, want int64
	}{{10, 0, 10}, {0, 0, 0}, {100, 10, 80}, {40, 10, 0}, {41, 10, 21}} {
		v := leaseView{held: tc.held, demand: tc.demand}
		if got := v.excess(); got != tc.want {
			t.Errorf("leaseView{held: %d, demand: %d}.excess() = %d, want %d", tc.held, tc.demand, got, tc.want)
		}
	}
}

// FuzzLeaseInvariants: a top-up is never negative and never more than
// fits; instances whose views agree (same fit, total = Σ mine) never ask for
// more than fits between them; excess never exceeds what is held.
func FuzzLeaseInvariants(f *testing.F) {
	f.Add(int64(1000), int64(10), int64(500), int64(90), int64(10), int64(0), int64(2))
	f.Add(int64(7), int64(0), int64(3), int64(0), int64(0), int64(5), int64(3))
	f.Fuzz(func(t *testing.T, fit, held, demand, a, b, c, instances int64) {
		if fit < 0 || fit > maxLimitWindow || held < 0 || held > maxLimitWindow || demand < 0 || demand > maxLimitWindow ||
			a < 0 || b < 0 || c < 0 || a > 1<<40 || b > 1<<40 || c > 1<<40 || instances < 1 || instances > 1<<20 {
			t.Skip()
		}
		mine := []int64{a, b, c}
		total := a + b + c
		sum := int64(0)
		for _, m := range mine {
			v := leaseView{fit: fit, held: held, demand: demand, mine: m, total: total, instances: max(instances, 3)}
			up := v.topUp()
			if up < 0 || up > fit {
				t.Fatalf("%+v.topUp() = %d, want in [0, %d]", v, up, fit)
			}
			if ex := v.excess(); ex < 0 || ex > held {
				t.Fatalf("%+v.excess() = %d, want in [0, %d]", v, ex, held)
			}
			sum += up
		}
		if sum > fit {
			t.Fatalf("top-ups of agreeing views sum to %d > fit %d (mine %v, demand %d)", sum, fit, mine, demand)
		}
	})
}
