package lookup_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"mxid/lookup"
)

var (
	benchFirst = strings.Fields(`Alice Amélie Anna Anne Antoine Arnaud Aurélie Benoît Bernard Béatrice Camille Caroline
		Céline Charles Chloé Christophe Claire Clément David Denis Didier Dominique Élodie Émilie Éric Étienne Fabrice
		Florence François Frédéric Gaëlle Guillaume Hélène Hugo Inès Isabelle Jacques Jean Jérôme Joël Julie Julien
		Karine Laura Laurent Léa Léon Lucas Lucie Łukasz Manon Marc Margaux Marie Martin Mathieu Maëlle Michel Nathalie
		Nicolas Noémie Océane Olivier Pascal Patrick Paul Philippe Pierre Raphaël Rémi Renée Sandrine Sébastien Sophie
		Stéphane Sylvie Søren Thierry Thomas Valérie Vincent Virginie Xavier Yann Zoé Ahmed Aïcha Björn Øystein Jürgen
		Mohammed Fatima Priya Rahul Wei Mei Hiroshi Yuki Olga Ivan Dmitri Agnieszka Zofia Mateus João Siobhán Seán`)
	benchLast = strings.Fields(`Martin Bernard Dubois Thomas Robert Richard Petit Durand Leroy Moreau Simon Laurent
		Lefèvre Michel Garcia David Bertrand Roux Vincent Fournier Morel Girard André Lefebvre Mercier Dupont Lambert
		Bonnet François Martinez Legrand Garnier Faure Rousseau Blanc Guérin Müller Henry Roussel Nicolas Perrin Morin
		Mathieu Clément Gauthier Dumont Lopez Fontaine Chevalier Robin Masson Sanchez Gérard Nguyen Boyer Denis Lemaire
		Duval Joly Gautier Roger Roche Roy Noël Meyer Lucas Meunier Jean Pérez Marchand Dufour Blanchard Marie Barbier
		Brun Dumas Brunet Schmitt Leroux Colin Fernandez Pierre Renard Arnaud Rolland Caron Aubert Giraud Leclerc Vidal
		Bourgeois Renaud Lemoine Picard Gaillard Philippe Leclercq Lacroix Fabre Dupuis Olivier Rodriguez Da Silva
		Hubert Louis Charles Guillot Rivière Le Gall Guillaume Adam Rey Moulin Gonzalez Berger Lecomte Menard Fleury
		Deschamps Carpentier Julien Benoît Paris Maillard Marchal Aubry Vasseur Le Roux Renault Jacquet Collet Prévost
		Poirier Charpentier Royer Huet Baron Dupuy Pons Paul Laine Carré Breton Rémy Schneider Perrot Guyot Barre
		Marty Cousin Ødegård Kowalski Nowak Wiśniewski Jensen Hansen Nielsen Andersson Johansson Karlsson Nilsson
		Yamamoto Tanaka Suzuki Watanabe Chen Wang Zhang Liu Singh Kumar Sharma Patel O'Brien O'Connor McCarthy Murphy`)
	benchDepts = strings.Fields(`Accounting Sales Marketing Engineering Legal Support Finance Research Logistics Purchasing
		Facilities Security Communication Training Quality Operations Procurement Compliance Design Strategy`)
)

// benchPeople is n people with realistic names: accents, several words,
// duplicates, a department for some.
func benchPeople(n int) []lookup.Person {
	r := rand.New(rand.NewPCG(1, 2))
	people := make([]lookup.Person, n)
	for i := range people {
		first, last := benchFirst[r.IntN(len(benchFirst))], benchLast[r.IntN(len(benchLast))]
		name := first + " " + last
		if r.IntN(10) < 3 {
			name += " (" + benchDepts[r.IntN(len(benchDepts))] + ")"
		}
		local := strings.ToLower(strings.Join(lookup.FoldWords(first+" "+last, false), "."))
		people[i] = lookup.Person{UserID: fmt.Sprintf("@%s%d:example.org", local, i), DisplayName: name}
	}
	return people
}

// benchTerms is what people type into a client's search box, keystroke by
// keystroke: a first name, then the start of a last name or a department;
// a last name alone; single letters.
func benchTerms(people []lookup.Person, n int) []string {
	r := rand.New(rand.NewPCG(3, 4))
	var terms []string
	for len(terms) < n {
		p := people[r.IntN(len(people))]
		words := strings.Fields(p.DisplayName)
		first, second := words[0], words[1]
		for i := 1; i <= len([]rune(first)); i++ {
			terms = append(terms, string([]rune(first)[:i]))
		}
		for i := 1; i <= len([]rune(second)); i++ {
			terms = append(terms, first+" "+string([]rune(second)[:i]))
		}
		terms = append(terms, second, strings.ToLower(first[:1])+" "+benchDepts[r.IntN(len(benchDepts))][:3])
	}
	return terms[:n]
}

// BenchmarkDirectorySearch searches 100,000 entries with the terms people
// type (limit 10, as clients ask): ns/op is the mean; p50, p99 and the
// slowest search are reported too.
func BenchmarkDirectorySearch(b *testing.B) {
	people := benchPeople(100000)
	var x lookup.SearchIndex
	start := time.Now()
	x.Replace(people)
	build := time.Since(start)
	terms := benchTerms(people, 20000)
	durations := make([]time.Duration, 0, b.N)
	found := 0
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		got, _ := x.Search(terms[i%len(terms)], 10)
		durations = append(durations, time.Since(t0))
		found += len(got)
	}
	b.StopTimer()
	if found == 0 {
		b.Fatal("nothing found")
	}
	slices.Sort(durations)
	q := func(p float64) float64 { return float64(durations[int(p*float64(len(durations)-1))].Microseconds()) }
	b.ReportMetric(q(0.50), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
	b.ReportMetric(q(1), "max-µs")
	b.ReportMetric(float64(build.Milliseconds()), "build-ms")
}
