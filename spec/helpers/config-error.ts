import { expect } from 'chai';
import { ConfigError } from '../../lib/config/load-config.js';

/** Runs `fn`, which must throw a ConfigError, and returns that error. */
export function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(ConfigError);
    return err as ConfigError;
  }
  expect.fail('expected a ConfigError');
}
