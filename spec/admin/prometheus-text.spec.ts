import { expect } from 'chai';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { parsePrometheusText, sumOf } from '../../lib/admin/prometheus-text.js';

describe('prometheus-text', () => {
  describe('#parsePrometheusText', () => {
    it("reads back what a prom-client registry serves: labels (escapes included), histograms, NaN and infinities", async () => {
      const registry = new Registry();
      registry.setDefaultLabels({ node: 'n-1' });
      const counter = new Counter({ name: 'x_requests_total', help: 'h', labelNames: ['route'], registers: [registry] });
      counter.inc({ route: 'a "quoted" \\ back\nslash' }, 3);
      counter.inc({ route: '/status' }, 2);
      const gauge = new Gauge({ name: 'x_lag_seconds', help: 'h', registers: [registry] });
      gauge.set(NaN);
      const infinite = new Gauge({ name: 'x_limit', help: 'h', labelNames: ['side'], registers: [registry] });
      infinite.set({ side: 'up' }, Infinity);
      infinite.set({ side: 'down' }, -Infinity);
      const histogram = new Histogram({ name: 'x_duration_seconds', help: 'h', buckets: [0.1, 1], registers: [registry] });
      histogram.observe(0.05);
      histogram.observe(0.5);
      histogram.observe(5);

      const samples = parsePrometheusText(await registry.metrics());
      expect(samples.filter((s) => s.name === 'x_requests_total')).to.deep.equal([
        { name: 'x_requests_total', labels: { route: 'a "quoted" \\ back\nslash', node: 'n-1' }, value: 3 },
        { name: 'x_requests_total', labels: { route: '/status', node: 'n-1' }, value: 2 },
      ]);
      expect(samples.find((s) => s.name === 'x_lag_seconds')!.value).to.be.NaN;
      expect(samples.filter((s) => s.name === 'x_limit').map((s) => [s.labels.side, s.value])).to.deep.equal([['up', Infinity], ['down', -Infinity]]);
      expect(samples.filter((s) => s.name === 'x_duration_seconds_bucket').map((s) => [s.labels.le, s.value])).to.deep.equal([['0.1', 1], ['1', 2], ['+Inf', 3]]);
      expect(sumOf(samples, 'x_duration_seconds_sum')).to.equal(5.55);
      expect(sumOf(samples, 'x_duration_seconds_count')).to.equal(3);
    });

    it('takes a timestamp after the value, spaces around labels and a trailing comma', () => {
      expect(parsePrometheusText('# HELP a b\n\na_total{ x = "1" , y="2", } 7 1700000000000\nb 1.5e3\n')).to.deep.equal([
        { name: 'a_total', labels: { x: '1', y: '2' }, value: 7 },
        { name: 'b', labels: {}, value: 1500 },
      ]);
    });

    it('names the line and what it expected at a malformed line', () => {
      expect(() => parsePrometheusText('a 1\nb{x="1} 2\n')).to.throw('metrics line 2: unterminated label value: "b{x=\\"1} 2"');
      expect(() => parsePrometheusText('a one')).to.throw('metrics line 1: expected a number, got "one"');
      expect(() => parsePrometheusText('a{x=1} 2')).to.throw('metrics line 1: expected a quoted value of label x');
      expect(() => parsePrometheusText('a{x="\\t"} 2')).to.throw('metrics line 1: unknown escape "\\t" in a label value');
      expect(() => parsePrometheusText('{x="1"} 2')).to.throw('metrics line 1: expected a metric name');
      expect(() => parsePrometheusText('a{x="1"}')).to.throw('metrics line 1: expected a value');
    });
  });

  describe('#sumOf', () => {
    it('adds a metric over its label sets, and is undefined for a metric that is not there', () => {
      const samples = parsePrometheusText('c{node="a"} 2\nc{node="b"} 3\nd 1\n');
      expect(sumOf(samples, 'c')).to.equal(5);
      expect(sumOf(samples, 'e')).to.equal(undefined);
    });
  });
});
